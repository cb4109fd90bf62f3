"""Bad recipe settings fail early with messages that name the problem and the fix."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from darwin_modifier.modifier import DarwinLMModifier
from tests.modifier.test_oneshot import run_oneshot


def test_defaults_are_the_papers():
    modifier = DarwinLMModifier()
    assert (modifier.generations, modifier.offspring, modifier.num_levels) == (
        200,
        16,
        11,
    )
    assert [
        (s.survivors, s.train_tokens, s.fitness_tokens)
        for s in modifier.selection_stages
    ] == [
        (8, 10_000, 1_024),
        (4, 50_000, 2_048),
        (2, 100_000, 4_096),
        (1, 200_000, 8_192),
    ]
    assert modifier.learning_rate == 1e-5 and modifier.damp == 0.01


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"target_fraction": 0.5, "target_level": 3}, "give only one size target"),
        ({"target_level": 10}, "removes every block"),
        ({"target_fraction": 1.5}, "less than or equal to 1"),
        ({"gqa_mode": "heads"}, "kv_group"),
        (
            {
                "offspring": 4,
                "selection_stages": [
                    {"survivors": 8, "train_tokens": 0, "fitness_tokens": 1},
                    {"survivors": 1, "train_tokens": 0, "fitness_tokens": 1},
                ],
            },
            "keeps 8 of only 4",
        ),
        (
            {
                "selection_stages": [
                    {"survivors": 2, "train_tokens": 0, "fitness_tokens": 1}
                ]
            },
            "last stage must keep exactly 1",
        ),
        ({"generatons": 5}, "generatons"),  # misspelt field
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValidationError, match=message):
        DarwinLMModifier(**settings)


def test_recipe_name_resolves_after_import():
    from llmcompressor.recipe import Recipe

    recipe = Recipe.create_instance(
        yaml.safe_dump(
            {
                "darwin_stage": {
                    "darwin_modifiers": {"DarwinLMModifier": {"generations": 3}}
                }
            }
        )
    )
    (modifier,) = recipe.modifiers
    assert isinstance(modifier, DarwinLMModifier) and modifier.generations == 3


def test_infeasible_target_is_refused_before_calibration(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="exceeds the dense model"):
        run_oneshot(tiny_dir, tmp_path, target_params=10**9, target_fraction="null")


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import GPT2Config

    from darwin_modifier.families import family_of

    with pytest.raises(ValueError, match="unsupported architecture model_type='gpt2'"):
        family_of(GPT2Config())


# A fresh interpreter, as a user's script: LLM Compressor only, no darwin_modifier.
WITHOUT_IMPORT = '''
import sys
from llmcompressor.recipe import Recipe

recipe = Recipe.create_instance("""
train_stage:
  train_modifiers:
    DarwinLMTrainingModifier: {tokens: 4096, seq_len: 64}
""")
assert "darwin_modifier" in sys.modules  # imported by the start-up hook
(modifier,) = recipe.modifiers
print(type(modifier).__module__, type(modifier).__name__, modifier.tokens)
'''


def test_recipe_name_resolves_without_import():
    """Through darwin_modifier.pth (wheels; `make setup` for editable installs)."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_IMPORT], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[-3:] == [
        "darwin_modifier.modifier.posttrain",
        "DarwinLMTrainingModifier",
        "4096",
    ]
