"""The bad-input catalogue: each mistake is refused with a message that names the field
(or file) and the fix, before any calibration, search or save."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from darwin_modifier.cli import main
from darwin_modifier.data.windows import load_texts
from darwin_modifier.modifier import DarwinLMModifier
from darwin_modifier.modifier.chain import oneshot_stages, split_stages
from darwin_modifier.pipeline import DarwinLMConfig
from darwin_modifier.plan import DenseShape
from tests.conftest import tiny_model
from tests.modifier.test_oneshot import RECIPE

ONE_STAGE = [{"survivors": 1, "train_tokens": 8, "fitness_tokens": 8}]

RECIPE_FIELDS = [  # (fields, words the message must contain)
    ({"target_fractio": 0.5}, "target_fractio"),
    ({"generations": "many"}, "generations"),
    ({"offspring": 0}, "offspring"),
    ({"generations": -1}, "generations"),
    ({"target_fraction": 0.5, "target_level": 3}, "only one size target"),
    ({"target_fraction": 1.5}, "target_fraction"),
    ({"target_fraction": 0}, "target_fraction"),
    ({"target_params": -5}, "target_params"),
    ({"target_level": 10}, "set target_level below 10"),
    ({"num_levels": 4}, "the default 5 removes every block"),
    (
        {
            "selection_stages": [
                {"survivors": 2, "train_tokens": 8, "fitness_tokens": 8}
            ]
        },
        "exactly 1 survivor",
    ),
    (
        {
            "offspring": 2,
            "selection_stages": [
                {"survivors": 4, "train_tokens": 8, "fitness_tokens": 8},
                *ONE_STAGE,
            ],
        },
        "keeps 4 of only 2",
    ),
    ({"selection_stages": []}, "at least one stage"),
    (
        {
            "selection_stages": [
                {"survivors": 0, "train_tokens": 8, "fitness_tokens": 8}
            ]
        },
        "at least 1 survivor",
    ),
    (
        {
            "selection_stages": [
                {"survivors": 1, "train_tokens": -1, "fitness_tokens": 8}
            ]
        },
        "train_tokens >= 0",
    ),
    (
        {"selection_stages": [{"survivors": 1, "train_tokens": 8, "fitness_tokn": 8}]},
        "fitness_tokn",
    ),
    ({"gqa_mode": "kv_groups"}, "gqa_mode"),
    ({"fitness": "kl_topk"}, "fitness"),
    ({"search_seq_len": 4}, "search_seq_len"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"save_dtype": "bf16"}, "save_dtype"),
    ({"target_speedup": 1.0}, "target_speedup"),
    ({"target_speedup": 1.3, "target_fraction": 0.5}, "only one size target"),
    ({"speedup_mode": "throughput"}, "speedup_mode"),
    ({"latency_batch": 0}, "latency_batch"),
]


@pytest.mark.parametrize(("fields", "words"), RECIPE_FIELDS)
def test_bad_recipe_fields_are_refused_when_parsed(fields, words):
    with pytest.raises((ValidationError, ValueError), match=words):
        DarwinLMModifier(**fields)


SHAPE_CHECKS = [  # (fields, words): refused against the model, before calibration
    ({"fitness": "topk_kl", "fitness_topk": 500}, "fitness_topk 500 exceeds"),
    ({"search_seq_len": 512}, "search_seq_len 512 exceeds .* at most 256"),
    ({"target_params": 10**9}, "exceeds the dense model's"),
    ({"mlp_multiple": 512}, "mlp_multiple"),
    ({"attn_ladder": [8, 4, 0]}, "level 0 must be dense"),
    ({"mlp_ladder": [200] + [0] * 10}, "level 0 must be dense"),
]


@pytest.mark.parametrize(("fields", "words"), SHAPE_CHECKS)
def test_settings_the_model_rules_out_are_refused(fields, words):
    model = tiny_model()  # vocab 128, 256 positions, 8 heads, MLP 96
    config = DarwinLMConfig(**{"search_seq_len": 128, **fields})
    with pytest.raises(ValueError, match=words):
        config.check_model(model.config)
        config.checked_ladders(DenseShape.from_config(model.config))


RECIPE_TEXTS = [
    ("", "recipe is empty"),
    ("# nothing but a comment\n", "recipe is empty"),
    ("missing_recipe.yaml", "recipe file missing_recipe.yaml does not exist"),
    ("darwin_stage:\n  m: [1,\n", "not valid YAML"),
    ("s_stage:\n  s_modifiers:\n    DarwinLMModifer: {}\n", "DarwinLMModifer"),
    ("s_stage:\n  darwin:\n    DarwinLMModifier: {}\n", "ending in '_modifiers'"),
    ("[1, 2]", "mapping of stages or modifiers"),
]


@pytest.mark.parametrize(("text", "words"), RECIPE_TEXTS)
def test_unreadable_recipes_are_refused(text, words):
    with pytest.raises((ValueError, FileNotFoundError), match=words):
        split_stages(text)


def test_a_text_column_plain_text_cannot_have_is_refused(tmp_path):
    with pytest.raises(ValueError, match="python-docs is plain text .* 'body'"):
        load_texts("python-docs", "calibration", "body")
    (tmp_path / "notes.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="plain text"):
        load_texts(str(tmp_path / "notes.txt"), "calibration", "body")


def test_jsonl_files_give_their_text_column(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(f'{{"body": "doc {i}", "id": {i}}}\n' for i in range(10)))
    assert load_texts(str(path), "calibration", "body") == ["doc 0", "doc 1"]
    assert load_texts(str(path), "heldout", "body") == ["doc 9"]
    with pytest.raises(ValueError, match="no column 'text'"):
        load_texts(str(path), "calibration", "text")


def test_a_missing_data_path_is_named():
    with pytest.raises(FileNotFoundError, match="/nonexistent/x.txt"):
        load_texts("/nonexistent/x.txt", "calibration")


def test_the_save_never_writes_over_the_input_model(tiny_dir):
    recipe = RECIPE.format(db=tiny_dir / "db", search=tiny_dir / "s")
    with pytest.raises(ValueError, match="overwrite the model"):
        oneshot_stages(str(tiny_dir), recipe, output_dir=str(tiny_dir))


@pytest.mark.parametrize("count", ["-3", "0"])
def test_cli_refuses_non_positive_counts(count, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "compress",
                "--model",
                "m",
                "--recipe",
                "r",
                "--output-dir",
                "o",
                "--num-samples",
                count,
            ]
        )
    assert exit_info.value.code == 2
    assert "--num-samples: must be a positive integer" in capsys.readouterr().err


def test_cli_refuses_missing_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", "--model", "m"])
    assert exit_info.value.code == 2
    assert "--recipe" in capsys.readouterr().err


def test_cli_prints_the_reason_not_a_traceback(tiny_dir, tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        "s_stage:\n  s_modifiers:\n    DarwinLMModifier: {offspring: 0}\n"
    )
    argv = [
        "compress",
        "--model",
        str(tiny_dir),
        "--recipe",
        str(recipe),
        "--output-dir",
        str(tmp_path / "out"),
        "--num-samples",
        "1",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "darwin-modifier compress: error:" in err and "offspring" in err
    assert "Traceback" not in err
    with pytest.raises(ValidationError):  # the traceback, for bug reports
        main(["--debug", *argv])


def test_a_database_is_bound_to_the_weights_not_to_their_path(tmp_path):
    from darwin_modifier.pipeline import open_database

    config = DarwinLMConfig(database_dir=str(tmp_path / "db"), generations=0)
    first = tiny_model(seed=0)
    first.config._name_or_path = str(tmp_path / "model")
    store, _ = open_database(first, config, "calibration-digest")
    store.close()
    moved = tiny_model(seed=0)  # the same weights, loaded from elsewhere
    moved.config._name_or_path = "model"
    open_database(moved, config, "calibration-digest")[0].close()
    retrained = tiny_model(seed=1)  # other weights saved over the same path
    retrained.config._name_or_path = str(tmp_path / "model")
    with pytest.raises(ValueError, match="different inputs .*model_weights: stored"):
        open_database(retrained, config, "calibration-digest")


def test_a_foreign_non_empty_output_dir_is_refused_before_any_work(tiny_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    recipe = RECIPE.format(db=tmp_path / "db", search=tmp_path / "s")
    with pytest.raises(ValueError, match="out is not empty and is not a checkpoint"):
        oneshot_stages(str(tiny_dir), recipe, output_dir=str(out))
    assert not (tmp_path / "db").exists()  # refused before calibration
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_sliding_window_attention_is_refused():
    from transformers import MistralConfig, Qwen2Config

    from darwin_modifier.families import family_of

    with pytest.raises(ValueError, match="sliding-window attention is not supported"):
        family_of(MistralConfig(sliding_window=4096))
    # Qwen2.5 configs name a window but do not use it
    assert family_of(Qwen2Config(sliding_window=131072, use_sliding_window=False))


def test_text_too_short_for_the_requested_tokens_is_named(tiny_dir, tmp_path):
    from darwin_modifier.modifier.chain import calibration_share

    short = tmp_path / "short.txt"
    short.write_text("".join(f"line {i} of a short file\n" for i in range(100)))
    with pytest.raises(
        ValueError, match="short.txt: asked for 64 windows of 512 .*0 windows"
    ):
        calibration_share(tiny_dir, str(short), num_samples=64, seq_len=512)


def test_an_unreachable_hub_dataset_is_named(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError(
            "Couldn't reach 'org/corpus' on the Hub (LocalEntryNotFound)"
        )

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="cannot open dataset 'org/corpus'.*network"):
        load_texts("org/corpus", "train")


@pytest.mark.parametrize("damage", ["truncate", "missing shard"])
def test_corrupt_model_weights_are_refused_before_any_work(tiny_dir, tmp_path, damage):
    import shutil

    model = Path(shutil.copytree(tiny_dir, tmp_path / "model"))
    weights = model / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-1000])
        words = "model.safetensors are unreadable .* runs past the end"
    else:
        shard = {"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
        (model / "model.safetensors.index.json").write_text(json.dumps(shard))
        words = "names shards that are missing: \\['model-00002"
    recipe = RECIPE.format(db=tmp_path / "db", search=tmp_path / "s")
    with pytest.raises(ValueError, match=words):
        oneshot_stages(str(model), recipe, output_dir=str(tmp_path / "out"))
    assert not (tmp_path / "db").exists()


def test_a_database_dir_that_cannot_be_written_is_named(tmp_path):
    from darwin_modifier.database.store import DatabaseStore

    (tmp_path / "file").write_text("in the way")
    with pytest.raises(OSError, match="database_dir .*file/db cannot be written"):
        DatabaseStore.open_or_create(tmp_path / "file" / "db", {}, {})


def test_a_full_disk_keeps_the_old_file_and_says_the_run_resumes(tmp_path):
    import errno

    from darwin_modifier.artifacts import replacing, write_json

    state = tmp_path / "search_state.json"
    write_json(state, {"generation": 3})
    with pytest.raises(OSError, match="no space left to write .*resumes from it"):
        with replacing(state) as partial:
            partial.write_text('{"generation": 4, ')
            raise OSError(errno.ENOSPC, "No space left on device")
    assert json.loads(state.read_text()) == {"generation": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["search_state.json"]


def test_pruning_an_already_shrunk_checkpoint_is_refused(tmp_path):
    from darwin_modifier.format.shrink import shrink
    from darwin_modifier.plan import Plan

    dense = tiny_model()
    plan = Plan.dense(DenseShape.from_config(dense.config))
    shrunk = shrink(dense, plan, {})
    with pytest.raises(ValueError, match="already shrunk by DarwinLM .*dense model"):
        DarwinLMConfig().check_model(shrunk.config)


def test_a_work_directory_inside_the_output_is_refused(tiny_dir, tmp_path):
    out = tmp_path / "out"
    recipe = RECIPE.format(db=out / "db", search=tmp_path / "s")
    with pytest.raises(ValueError, match="database_dir .*/out/db is inside output_dir"):
        oneshot_stages(str(tiny_dir), recipe, output_dir=str(out))
    assert not out.exists()
