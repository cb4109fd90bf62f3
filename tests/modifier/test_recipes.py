"""Every shipped recipe parses into valid modifiers; the SmolLM2 ones fit the model."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoConfig

from darwin_modifier.data import fetch_default_model
from darwin_modifier.modifier import DarwinLMModifier
from darwin_modifier.modifier.chain import split_stages
from darwin_modifier.modifier.rules import check_stages

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses(path):
    stages = split_stages(path)
    darwins = [
        m for s in stages for m in s.modifiers if isinstance(m, DarwinLMModifier)
    ]
    assert len(darwins) == 1
    if path.stem.startswith("smollm2"):
        check_stages(stages, AutoConfig.from_pretrained(fetch_default_model()))


def test_there_are_recipes():
    assert {p.stem for p in RECIPES} >= {"smollm2_cpu", "llama2_7b_to_2.7b"}
