"""Torch-Pruning 1.6.1 as a public peer for the quality benchmark.

Uniform structured pruning (the same shape in every decoder layer, as in
Torch-Pruning's LLM recipe) of a dense Llama-family causal LM down to a parameter
budget, ranked by first-order Taylor or L2-magnitude group importance. Embeddings,
lm_head and norms are left alone, so the hidden size does not change.

Attention granularity. For GQA, Torch-Pruning's head pruning (``prune_num_heads``)
removes the same number of query heads from every KV group, ranking them inside the
group, and never prunes k_proj/v_proj; ``prune_head_dims=False`` keeps head_dim and
RoPE intact. Each layer can therefore keep 1..q_per_kv query heads per KV head, with
every KV head kept (an MHA model, q_per_kv = 1, gets only its MLP pruned). Two traps
in 1.6.1 + transformers 5.17 are handled here:

* The graph is traced with eager attention. SDPA receives un-repeated k/v, and the
  tracer treats it as element-wise, coupling only the first ``kv_heads * head_dim``
  q/o channels to k/v. Eager's ``repeat_kv`` expand maps each q/o head to its KV head.
* When a layer ends at one query head per KV head, the pruner's second GQA check
  sees equal head counts, stops exempting k/v, and the group fails its over-pruning
  check: attention would silently stay dense. We drop the k/v items from each group
  before that check.

Hitting the budget. A step of one query head per KV group costs
``layers * kv_heads * 2 * hidden * head_dim`` params (6.6M, ~5% of SmolLM2-135M), so
attention cannot hit a budget on its own. Let r be the fraction of the prunable
params (q/o and MLP) that has to go. We remove round(r * q_per_kv) query heads per KV
group (neighbours are tried if the MLP cannot absorb the rest). Then the MLP width is
the largest that keeps the total at or below the target, rounded down to a multiple
of 32, else 8, else 1: the first that stays within 0.5% of the target. One 8-channel
step on SmolLM2 is 30 * 8 * 1728 = 415k params, more than 0.5% of an 80M target, so
exact widths do happen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib.metadata import version

import torch
import torch_pruning as tp
from torch import nn

from darwin_modifier.evaluation.quality import count_params

TOLERANCE = 0.005  # the result lands in [(1 - TOLERANCE) * target, target]
MIN_MLP = 32  # narrowest MLP this peer will produce
WIDTH_STEPS = (32, 8, 1)  # preferred MLP width multiples, coarsest first


@dataclass(frozen=True)
class Shape:
    """Kept sizes, identical in every decoder layer."""

    q_heads: int
    kv_heads: int
    mlp_width: int


def _costs(model: nn.Module) -> tuple[int, int]:
    """Params one layer loses per removed query head and per removed MLP channel."""
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    head = attn.head_dim * (attn.q_proj.in_features + attn.o_proj.out_features)
    head += attn.head_dim if attn.q_proj.bias is not None else 0
    gate_up_bias = 2 if mlp.gate_proj.bias is not None else 0
    return head, 3 * mlp.gate_proj.in_features + gate_up_bias


def plan(model: nn.Module, target_params: int) -> Shape:
    """The uniform shape whose total is at or just below target (module docstring)."""
    cfg, dense = model.config, count_params(model)
    layers, inter = cfg.num_hidden_layers, cfg.intermediate_size
    n_q, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_cost, channel_cost = _costs(model)

    def total(q_heads: int, width: int) -> int:
        per_layer = (n_q - q_heads) * head_cost + (inter - width) * channel_cost
        return dense - layers * per_layer

    smallest = total(n_kv, MIN_MLP)
    if target_params > dense:
        raise ValueError(f"target {target_params:,} params is above dense ({dense:,})")
    if target_params < smallest:
        raise ValueError(
            f"target {target_params:,} params is below {smallest:,}, the smallest this"
            f" recipe reaches (1 query head per KV head, {n_kv} KV heads, {MIN_MLP}"
            " MLP channels)"
        )
    group = n_q // n_kv
    prunable = layers * (n_q * head_cost + inter * channel_cost)  # q/o and MLP
    ratio = (dense - target_params) / prunable
    for removed in sorted(range(group), key=lambda k: abs(k - ratio * group)):
        q_heads = n_q - removed * n_kv
        if cfg.hidden_size % q_heads:  # LlamaConfig refuses this on from_pretrained
            continue
        widest = min(
            inter, (target_params - total(q_heads, 0)) // (layers * channel_cost)
        )
        for step in WIDTH_STEPS:
            width = widest if widest == inter else widest - widest % step
            if (
                width >= MIN_MLP
                and total(q_heads, width) >= (1 - TOLERANCE) * target_params
            ):
                return Shape(q_heads, n_kv, width)
    raise ValueError(
        f"no uniform shape lands within {TOLERANCE:.1%} below {target_params:,} params"
        f" (one MLP channel in every layer is {layers * channel_cost:,} params)"
    )


def _accumulate_gradients(model: nn.Module, calibration: torch.Tensor) -> None:
    """weight.grad = d(mean causal-LM loss)/dW, which GroupTaylorImportance reads."""
    model.eval()
    model.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    with torch.enable_grad():
        for batch in calibration.split(4):
            batch = batch.to(device)
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            (loss * len(batch) / len(calibration)).backward()


def _exempt_kv(pruner: tp.pruner.BasePruner, kv_layers: set[nn.Module]) -> None:
    """Never prune k/v, even where 1.6.1's GQA check forgets to (module docstring)."""
    check = pruner.DG.check_pruning_group

    def check_without_kv(group) -> bool:
        for i, (dep, _) in enumerate(group):
            if dep.target.module in kv_layers:
                group[i] = (dep, [])
        return check(group)

    pruner.DG.check_pruning_group = check_without_kv


def _run_pruner(
    model: nn.Module,
    shape: Shape,
    importance: tp.importance.Importance,
    example: torch.Tensor,
) -> None:
    """One Torch-Pruning step: local ranking per layer, the same ratios everywhere."""
    cfg, inter = model.config, model.config.intermediate_size
    n_q, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    removed = n_q - shape.q_heads
    # ceil(ratio * n_q) must come out exactly `removed`; the 0.5 keeps float error out.
    head_ratio = (removed - 0.5) / n_q if removed else 0.0
    mlp_ratio = (
        (inter - shape.mlp_width - 0.5) / inter if shape.mlp_width < inter else 0.0
    )
    num_heads, kv_layers = {}, set()
    for layer in model.model.layers:
        attn = layer.self_attn
        num_heads.update({attn.q_proj: n_q, attn.k_proj: n_kv, attn.v_proj: n_kv})
        kv_layers.update({attn.k_proj, attn.v_proj})
    norms = [
        (p, 0) for name, p in model.named_parameters() if name.endswith("norm.weight")
    ]
    attn_impl = model.config._attn_implementation
    model.set_attn_implementation("eager")  # see the module docstring
    try:
        pruner = tp.pruner.BasePruner(
            model,
            example_inputs=example,
            forward_fn=lambda m, x: m(input_ids=x, use_cache=False).logits,
            importance=importance,
            global_pruning=False,
            # Attention groups get this width ratio. prune_head_dims=False drops the
            # channels it picks, but heads are only pruned if it picks some.
            pruning_ratio=head_ratio,
            pruning_ratio_dict={layer.mlp: mlp_ratio for layer in model.model.layers},
            num_heads=num_heads,
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=head_ratio,
            ignored_layers=[model.model.embed_tokens, model.lm_head],
            unwrapped_parameters=norms,
        )
        _exempt_kv(pruner, kv_layers)
        pruner.step()
    finally:
        model.set_attn_implementation(attn_impl)


def _sync_config(model: nn.Module, shape: Shape) -> None:
    """Module attributes and config to the new shape, for forward, generate, reload."""
    cfg = model.config
    cfg.head_dim = model.model.layers[0].self_attn.head_dim
    cfg.num_attention_heads, cfg.num_key_value_heads = shape.q_heads, shape.kv_heads
    cfg.intermediate_size = shape.mlp_width
    for layer in model.model.layers:
        layer.self_attn.num_key_value_groups = shape.q_heads // shape.kv_heads
        layer.mlp.intermediate_size = shape.mlp_width


def prune_to_params(
    model: nn.Module,
    calibration: torch.Tensor,
    target_params: int,
    importance: str = "taylor",
) -> nn.Module:
    """Prune ``model`` in place, uniformly, to at most ``target_params`` params.

    ``calibration`` is an int64 [n, seq] batch of token windows; with ``"taylor"`` it
    supplies the loss gradients, with ``"magnitude"`` (L2) only the trace input.
    """
    scorers = {
        "taylor": tp.importance.GroupTaylorImportance,
        "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    }
    if importance not in scorers:
        raise ValueError(
            f"importance must be one of {sorted(scorers)}, not {importance!r}"
        )
    shape, hidden = plan(model, target_params), model.config.hidden_size
    if importance == "taylor":
        _accumulate_gradients(model, calibration)
    try:
        _run_pruner(model, shape, scorers[importance](), calibration[:1, :32])
    finally:
        model.zero_grad(set_to_none=True)
    _sync_config(model, shape)
    got = describe(model)
    planned = {**asdict(shape), "hidden_size": hidden}  # hidden never pruned
    mismatch = any(layer != planned for layer in got["layers"])
    if mismatch or got["params"] > target_params or got["hidden_size"] != hidden:
        raise RuntimeError(f"Torch-Pruning produced {got}, planned {shape}")
    return model


def describe(model: nn.Module) -> dict:
    """What was kept, read off the modules, for the benchmark's JSON."""
    layers = []
    for layer in model.model.layers:
        attn = layer.self_attn
        layers.append(
            {
                "q_heads": attn.q_proj.out_features // attn.head_dim,
                "kv_heads": attn.k_proj.out_features // attn.head_dim,
                "mlp_width": layer.mlp.gate_proj.out_features,
                "hidden_size": attn.q_proj.in_features,
            }
        )
    return {
        "method": "torch-pruning uniform",
        "torch_pruning": version("torch-pruning"),  # tp.__version__ says 1.6.0
        "params": count_params(model),
        "head_dim": model.model.layers[0].self_attn.head_dim,
        "hidden_size": model.model.embed_tokens.weight.shape[1],
        "layers": layers,
    }
