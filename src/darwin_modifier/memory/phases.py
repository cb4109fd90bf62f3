"""Peak memory of each phase of a DarwinLM run, counted from what the code keeps.

Pure arithmetic on a :class:`~darwin_modifier.memory.spec.ModelSpec` and the run's
settings. Each phase lists its parts on the execution device (the GPU; on a CPU-only
machine everything is host memory) and in host memory, following where the code puts
things:

- **database** (LLM Compressor's sequential pipeline): the dense model offloaded to
  the host, every calibration sample's hidden states cached on the host, one decoder
  layer onloaded with its two Hessians and the OBS workspace of its down projection
  (the larger of the two; :mod:`darwin_modifier.database.obs`).
- **search, dense targets**: the dense model on the device, one batch of fitness
  windows through it; the targets go to the host.
- **search, light training**: the dense weights back in host memory, the untrained
  copy there too (:class:`~darwin_modifier.search.candidates.Workbench`); on the
  device the candidate (at most the target's size) with fp32 trained parameters, their
  gradients and fused AdamW states (16 bytes per trained parameter), the activations
  of one training window, and one chunk of logits.
- **post-training**: the shrunk model trained the same way on ``batch_size`` windows,
  with the fp32 teacher on the device for loss ``kd``.

Activations per token of a decoder layer under bf16 autocast (bytes, hidden ``h``,
query / KV widths ``q`` / ``kv``, MLP width ``i``): two RMSNorms keep their fp32 input
and normalised output and a bf16 cast (``20 h``); attention keeps its projections,
rotary inputs, GQA-expanded keys and values, output and o_proj input (``14 q + 8
kv``); the MLP keeps gate, up, activation and product in bf16 (``8 i``). With gradient
checkpointing the layers keep only their fp32 inputs (``4 h``) and one layer is
recomputed at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from darwin_modifier.database.units import heads_per_unit
from darwin_modifier.evaluation.kl import tokens_per_chunk
from darwin_modifier.memory.spec import ModelSpec
from darwin_modifier.plan import Plan

GiB = 2**30


@dataclass
class Phase:
    name: str
    device: dict[str, int] = field(default_factory=dict)
    host: dict[str, int] = field(default_factory=dict)

    @property
    def device_bytes(self) -> int:
        return sum(self.device.values())

    @property
    def host_bytes(self) -> int:
        return sum(self.host.values())

    def to_dict(self) -> dict:
        return {
            "device_gib": round(self.device_bytes / GiB, 2),
            "host_gib": round(self.host_bytes / GiB, 2),
            "device_parts_gib": {k: round(v / GiB, 3) for k, v in self.device.items()},
            "host_parts_gib": {k: round(v / GiB, 3) for k, v in self.host.items()},
        }


def layer_activations_per_token(h: int, q: int, kv: int, i: int) -> int:
    """Bytes a decoder layer keeps per token for the backward pass (module doc)."""
    return 20 * h + 14 * q + 8 * kv + 8 * i


def logits_bytes(tokens: int, vocab: int, training: bool) -> int:
    """The largest logits temporaries: one chunk of tokens (or the whole sequence when
    it fits in one, as :func:`~darwin_modifier.training.losses.causal_lm_loss` does).
    bf16 logits, fp32 copy, log-softmax and (training) its gradient."""
    rows = min(tokens, tokens_per_chunk(vocab))
    return rows * vocab * (14 if training else 10)


def target_block_params(spec: ModelSpec, config) -> int:
    """Decoder-block parameters of the largest candidate: the size target (a level's
    uniform model counted with every KV head once, as a balanced layout stores it)."""
    shape = spec.shape
    dense = Plan.dense(shape)
    ladders = config.checked_ladders(shape)  # an infeasible target is named here
    if config.target_speedup is not None:  # known from the latency table only
        return dense.block_params()
    target_params, level = config.resolve(dense.block_params())
    if target_params is not None:
        return target_params
    per_unit = heads_per_unit(shape, config.gqa_mode)
    heads = ladders["attn"][level] * per_unit
    if config.gqa_mode == "kv_group":
        kv = heads // shape.group_size
    else:
        kv = min(heads, shape.num_kv_heads)
    per_layer = dense.attention_params(heads, kv) + dense.mlp_params(
        ladders["mlp"][level]
    )
    return shape.num_layers * per_layer


def _trained_model(
    spec: ModelSpec, block_params: int, train_embeddings: bool, parts: dict
) -> int:
    """Adds the weights, gradients and AdamW states of a model being trained; returns
    its trained-parameter count."""
    trained = block_params + spec.other_params
    if train_embeddings:
        trained += spec.embedding_params
    else:
        parts["frozen embeddings"] = spec.embedding_params * spec.element_size
    parts["fp32 trained weights"] = 4 * trained
    parts["gradients (fp32)"] = 4 * trained
    parts["AdamW states (fp32)"] = 8 * trained
    return trained


def _activations(
    spec: ModelSpec, fraction: float, tokens: int, checkpointing: bool
) -> int:
    """Activations of ``tokens`` through a model whose layers keep ``fraction`` of
    the dense widths (the candidate's average)."""
    s = spec.shape
    q = int(fraction * s.num_heads * s.head_dim)
    kv = int(min(1.0, 2 * fraction) * s.num_kv_heads * s.head_dim)
    width = int(fraction * s.intermediate_size)
    layer = layer_activations_per_token(s.hidden_size, q, kv, width) * tokens
    if checkpointing:
        return s.num_layers * 4 * s.hidden_size * tokens + layer
    return s.num_layers * layer


def database_phase(
    spec: ModelSpec, calibration_tokens: int, seq_len: int, num_levels: int
) -> Phase:
    s, b = spec.shape, spec.element_size
    dense_layer = Plan.dense(s).block_params() // s.num_layers
    n, out = s.intermediate_size, s.hidden_size
    phase = Phase("database")
    phase.device["one decoder layer"] = dense_layer * b
    phase.device["o_proj Hessian (fp32)"] = 4 * (s.num_heads * s.head_dim) ** 2
    # H, its damped copy, the inverse, and a restricted copy at re-solves; W, its
    # transposed working copy and two snapshot temporaries; the levels' weights
    phase.device["down_proj OBS workspace"] = (
        4 * 4 * n * n + 4 * 4 * n * out + b * n * out * num_levels // 2
    )
    phase.device["one window's forward"] = seq_len * (4 * s.hidden_size + 3 * n) * b
    phase.host["dense model (offloaded)"] = spec.total_params * b
    phase.host["activation cache"] = calibration_tokens * s.hidden_size * b
    return phase


def search_phases(spec: ModelSpec, config) -> list[Phase]:
    s, b = spec.shape, spec.element_size
    seq = config.search_seq_len
    dense_blocks = Plan.dense(s).block_params()
    blocks = target_block_params(spec, config)
    fraction = blocks / dense_blocks
    # the probe's dense targets (the search curve) sit beside the fitness pool's
    fit_tokens = (
        -(-config.fitness_pool_tokens // seq) - (-config.probe_tokens // seq)
    ) * seq
    train_tokens = -(-config.train_pool_tokens // seq) * seq
    if config.fitness == "topk_kl":
        k = min(config.fitness_topk, spec.vocab_size)
        targets = fit_tokens * (k * (2 + 4) + 4)
    else:
        targets = fit_tokens * spec.vocab_size * 2
    pools = (fit_tokens + train_tokens) * 8

    dense_targets = Phase("search: dense targets")
    dense_targets.device["dense model"] = spec.total_params * b
    batch_tokens = config.eval_batch_size * seq
    dense_targets.device["one batch's forward"] = batch_tokens * (
        3 * 4 * s.hidden_size + 3 * 2 * s.intermediate_size
    ) + logits_bytes(batch_tokens, spec.vocab_size, training=False)
    dense_targets.host["dense targets"] = targets
    dense_targets.host["token pools"] = pools

    training = Phase("search: light training")
    trained = _trained_model(spec, blocks, config.train_embeddings, training.device)
    training.device["activations (one window)"] = _activations(
        spec, fraction, seq, config.gradient_checkpointing
    )
    training.device["logits"] = logits_bytes(seq, spec.vocab_size, training=True)
    training.host["dense model"] = spec.total_params * b
    training.host["untrained copy"] = trained * b
    training.host["dense targets"] = targets
    training.host["token pools"] = pools
    return [dense_targets, training]


def posttrain_phase(spec: ModelSpec, block_params: int, training) -> Phase:
    """``training``: a :class:`~darwin_modifier.pipeline.TrainingConfig`."""
    phase = Phase("post-training")
    _trained_model(spec, block_params, training.train_embeddings, phase.device)
    # post-training casts the whole model to fp32: frozen embeddings too
    if "frozen embeddings" in phase.device:
        phase.device["frozen embeddings"] = 4 * spec.embedding_params
    tokens = training.seq_len * training.batch_size
    fraction = block_params / Plan.dense(spec.shape).block_params()
    phase.device["activations"] = _activations(
        spec, fraction, tokens, training.gradient_checkpointing
    )
    phase.device["logits"] = logits_bytes(tokens, spec.vocab_size, training=True)
    if training.loss == "kd":
        phase.device["teacher (fp32)"] = spec.total_params * 4
        phase.device["teacher logits"] = tokens * spec.vocab_size * 4
    return phase
