"""OBS on the real SmolLM2's activations beats pruning without a weight update.

The database's value rests on one claim (method.md §1-2): at the same kept width, the
OBS-updated ``o_proj`` / ``down_proj`` reproduce the dense layer's output better than
plain slicing of the same kept columns, and better than magnitude selection, on data
the Hessian never saw. This test collects the real input Hessians of two layers
with forward hooks and ``HessianAccumulator`` (the build's own accumulator), prunes
them with ``prune_layer`` (the build's own function) and measures the relative output
reconstruction error ``‖X (W' - W)ᵀ‖² / ‖X Wᵀ‖²`` on held-out activations (the corpus's
held-out split, other documents) as well as on the calibration activations.

Calibration size matters: with 512 tokens (4 × 128) the 1536-wide ``down_proj`` input
Hessian has rank ≤ 512 and OBS fits the calibration tokens almost exactly but is *worse*
than plain slicing on held-out tokens in 3 of these 4 matrices (measured; 1% damping
does not regularise enough). From ~4K tokens it wins everywhere, so this test uses
8192 (64 × 128); the builder's default is 64 × 512.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from darwin_modifier.data import corpus_split, fetch_default_model, token_windows
from darwin_modifier.database.config import DatabaseConfig
from darwin_modifier.database.hessian import HessianAccumulator
from darwin_modifier.database.obs import group_columns
from darwin_modifier.database.prune import heads_per_unit, prune_layer
from darwin_modifier.plan import DenseShape

pytestmark = pytest.mark.slow

LAYERS = (2, 12)  # an early and a middle decoder layer
SEQ_LEN, CAL_WINDOWS, HELD_WINDOWS = 128, 64, 8
LEVEL = 5  # the paper's target level: about half of each block
MARGIN = 0.9  # OBS must be at least 10% better than the best baseline on held-out


class _Stop(Exception):
    """Raised after the last watched layer: the rest of the model is not needed."""


@pytest.fixture(scope="module")
def activations():
    """Model, shape, calibration Hessians and raw inputs, held-out inputs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small sequential OBS steps: threads only contend
    path = fetch_default_model()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    calibration = token_windows(
        corpus_split("calibration"), tokenizer, SEQ_LEN, CAL_WINDOWS, seed=0
    )
    heldout = token_windows(
        corpus_split("heldout"), tokenizer, SEQ_LEN, HELD_WINDOWS, seed=0
    )
    watched = [
        m
        for i in LAYERS
        for m in (
            model.model.layers[i].self_attn.o_proj,
            model.model.layers[i].mlp.down_proj,
        )
    ]
    inputs: dict[torch.nn.Module, list[torch.Tensor]] = {}

    def capture(module, args, _output):
        inputs.setdefault(module, []).append(
            args[0].detach().reshape(-1, args[0].shape[-1])
        )

    def stop(*_):
        raise _Stop

    def run(windows, extra_hooks):
        inputs.clear()
        hooks = [m.register_forward_hook(capture) for m in watched]
        hooks += [m.register_forward_hook(h) for m in watched for h in extra_hooks]
        hooks.append(watched[-1].register_forward_hook(stop))
        try:
            with torch.no_grad():
                for row in windows:  # one window per batch, as oneshot feeds them
                    try:
                        model.model(row[None], use_cache=False)
                    except _Stop:
                        pass
        finally:
            for h in hooks:
                h.remove()
        return {m: torch.cat(xs) for m, xs in inputs.items()}

    accumulator = HessianAccumulator()
    cal_x = run(calibration, [accumulator.hook])
    held_x = run(heldout, [])
    yield model, DenseShape.from_config(model.config), accumulator, cal_x, held_x
    torch.set_num_threads(threads)


def relative_error(x, W, cols, weight):
    full = torch.zeros_like(W)
    full[:, cols] = weight
    return float((x @ (full - W).T).square().sum() / (x @ W.T).square().sum())


@pytest.mark.parametrize("gqa_mode", ["kv_group", "query"])
def test_obs_beats_no_update_on_held_out_activations(activations, gqa_mode):
    model, shape, accumulator, cal_x, held_x = activations
    ladders = DatabaseConfig(gqa_mode=gqa_mode).ladders(shape)
    results = {}
    for i in LAYERS:
        o_proj = model.model.layers[i].self_attn.o_proj
        down_proj = model.model.layers[i].mlp.down_proj
        levels, stats = prune_layer(
            o_proj.weight.data,
            accumulator.hessians[o_proj],
            down_proj.weight.data,
            accumulator.hessians[down_proj],
            shape,
            ladders,
            gqa_mode,
        )
        for module, linear, unit in (
            ("attn", o_proj, shape.head_dim * heads_per_unit(shape, gqa_mode)),
            ("mlp", down_proj, 1),
        ):
            W = linear.weight.data
            width = shape.head_dim if module == "attn" else 1
            _, kept, weight = levels[module][LEVEL]
            cols = group_columns(torch.tensor(kept), width)
            assert 0 < cols.numel() < W.shape[1]
            # magnitude: the units with the largest weight norm, same count, no update
            n_units, n_kept = W.shape[1] // unit, cols.numel() // unit
            norms = W.view(W.shape[0], n_units, unit).square().sum((0, 2))
            top = norms.topk(n_kept).indices.sort().values
            mag_cols = group_columns(top, unit)

            def errors(x, W=W, cols=cols, weight=weight, mag_cols=mag_cols):
                return {
                    "obs": relative_error(x, W, cols, weight),
                    "slice": relative_error(x, W, cols, W[:, cols]),
                    "magnitude": relative_error(x, W, mag_cols, W[:, mag_cols]),
                }

            cal, held = errors(cal_x[linear]), errors(held_x[linear])
            results[(i, module)] = cal, held
            # the stored loss is this very calibration error, in the accumulator's
            # unit: H = 2/n Σ xᵀx with n counting sequences (windows), not tokens
            diff = torch.zeros_like(W)
            diff[:, cols] = weight
            diff -= W
            direct = 2 / CAL_WINDOWS * float((cal_x[linear] @ diff.T).square().sum())
            assert stats[module][LEVEL]["loss"] == pytest.approx(direct, rel=1e-3)

    report = "\n".join(
        f"layer {i} {module}: calibration "
        + ", ".join(f"{k} {v:.4f}" for k, v in cal.items())
        + " | held-out "
        + ", ".join(f"{k} {v:.4f}" for k, v in held.items())
        for (i, module), (cal, held) in results.items()
    )
    print(f"\n{gqa_mode}, level {LEVEL}, relative output error\n{report}")
    for (_i, _module), (cal, held) in results.items():
        assert cal["obs"] < MARGIN * min(cal["slice"], cal["magnitude"]), report
        assert held["obs"] < MARGIN * min(held["slice"], held["magnitude"]), report
        assert held["obs"] < 0.5, report  # and it is a usable approximation at all
