"""The demo keeps everything of a run under its --out (never another run's
database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from darwin_modifier.demo import recipe_modifier

RECIPE = Path(__file__).parents[1] / "recipes" / "smollm2_cpu.yaml"


def test_database_and_search_go_under_out(tmp_path):
    modifier = recipe_modifier(RECIPE, tmp_path / "run")
    assert modifier.database_dir == str(tmp_path / "run" / "database")
    assert modifier.search_dir == str(tmp_path / "run" / "search")
    assert modifier.generations == 8 and modifier.target_fraction == 0.5  # the recipe's


def test_a_recipe_without_darwinlm_is_refused(tmp_path):
    recipe = (
        "quant_stage:\n  quant_modifiers:\n    QuantizationModifier: {scheme: W8A8}\n"
    )
    with pytest.raises(ValueError, match="one DarwinLMModifier"):
        recipe_modifier(recipe, tmp_path)
