"""The memory plan of a run: peaks per phase, whether they fit, and what would.

Used by ``darwin-modifier plan`` (from a recipe and a model's ``config.json``) and by
:class:`~darwin_modifier.modifier.base.DarwinLMModifier` at ``on_initialize``, so a
run that cannot fit is refused before any calibration, naming the setting to change.
"""

from __future__ import annotations

from dataclasses import dataclass

from darwin_modifier.memory.phases import (
    GiB,
    Phase,
    database_phase,
    posttrain_phase,
    search_phases,
    target_block_params,
)
from darwin_modifier.memory.spec import ModelSpec
from darwin_modifier.plan import Plan

# What a GPU loses to the CUDA context and the caching allocator's fragmentation.
CUDA_RESERVE = GiB
FRAGMENTATION = 0.05

# Tried in this order, each on top of the ones before, when the search does not fit.
SEARCH_SAVINGS = (
    {"gradient_checkpointing": True},
    {"train_embeddings": False},
    {"eval_batch_size": 1},
)


@dataclass
class MemoryPlan:
    phases: list[Phase]
    device: str  # "cuda" or "cpu" (everything then in host memory)
    device_capacity: int | None  # bytes; None on a CPU-only machine
    host_capacity: int | None  # bytes; None: not checked

    def device_peak(self) -> int:
        return max((p.device_bytes for p in self.phases), default=0)

    def host_peak(self) -> int:
        if self.device == "cpu":
            return max((p.device_bytes + p.host_bytes for p in self.phases), default=0)
        return max((p.host_bytes for p in self.phases), default=0)

    def fits_device(self) -> bool:
        capacity = self.device_capacity
        if self.device == "cpu" or capacity is None:
            return True
        return self.device_peak() * (1 + FRAGMENTATION) + CUDA_RESERVE <= capacity

    def fits_host(self) -> bool:
        capacity = self.host_capacity
        return capacity is None or self.host_peak() <= 0.9 * capacity

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "device_capacity_gib": _gib(self.device_capacity),
            "host_capacity_gib": _gib(self.host_capacity),
            "device_peak_gib": round(self.device_peak() / GiB, 2),
            "host_peak_gib": round(self.host_peak() / GiB, 2),
            "phases": {p.name: p.to_dict() for p in self.phases},
        }

    def table(self) -> str:
        where = "GPU" if self.device == "cuda" else "CPU (all in host memory)"
        lines = [f"{'phase':<26} {'device GiB':>11} {'host GiB':>9}   largest parts"]
        for p in self.phases:
            parts = sorted({**p.device, **p.host}.items(), key=lambda kv: -kv[1])[:3]
            named = ", ".join(f"{k} {v / GiB:.1f}" for k, v in parts)
            lines.append(
                f"{p.name:<26} {p.device_bytes / GiB:>11.1f} "
                f"{p.host_bytes / GiB:>9.1f}   {named}"
            )
        capacity = _gib(self.device_capacity)
        lines.append(
            f"peak on {where}: {self.device_peak() / GiB:.1f} GiB"
            + (f" of {capacity} GiB" if capacity and self.device == "cuda" else "")
            + f"; host: {self.host_peak() / GiB:.1f} GiB"
            + (f" of {_gib(self.host_capacity)} GiB" if self.host_capacity else "")
        )
        return "\n".join(lines)


def plan_run(
    spec: ModelSpec,
    darwin=None,
    training=None,
    *,
    calibration_tokens: int = 0,
    calibration_seq_len: int = 4096,
    device: str = "cuda",
    device_capacity: int | None = None,
    host_capacity: int | None = None,
) -> MemoryPlan:
    """``darwin``: a :class:`~darwin_modifier.pipeline.DarwinLMConfig` (or None);
    ``training``: a :class:`~darwin_modifier.pipeline.TrainingConfig` (or None)."""
    phases: list[Phase] = []
    blocks = Plan.dense(spec.shape).block_params()
    if darwin is not None:
        phases.append(
            database_phase(
                spec, calibration_tokens, calibration_seq_len, darwin.num_levels
            )
        )
        if darwin.generations > 0:
            phases.extend(search_phases(spec, darwin))
    if training is not None:
        if darwin is not None:
            blocks = target_block_params(spec, darwin)
        phases.append(posttrain_phase(spec, blocks, training))
    return MemoryPlan(phases, device, device_capacity, host_capacity)


def refusal(plan: MemoryPlan, spec: ModelSpec, darwin=None, training=None, **run):
    """Why ``plan`` cannot run and the setting that would make it, or None."""
    if not plan.fits_device():
        worst = max(plan.phases, key=lambda p: p.device_bytes)
        need = worst.device_bytes / GiB
        have = plan.device_capacity / GiB
        head = (
            f"the {worst.name} phase needs about {need:.1f} GiB of GPU memory "
            f"(+{FRAGMENTATION:.0%} and {CUDA_RESERVE / GiB:.0f} GiB reserve), more "
            f"than the {have:.1f} GiB there"
        )
        return f"{head}: {_device_fix(plan, spec, darwin, training, worst, run)}"
    if not plan.fits_host():
        return (
            f"the run needs about {plan.host_peak() / GiB:.1f} GiB of host memory, "
            f"more than 90% of the {plan.host_capacity / GiB:.1f} GiB available: "
            f"{_host_fix(plan, spec, darwin, run)}"
        )
    return None


def _device_fix(plan, spec, darwin, training, worst: Phase, run) -> str:
    if worst.name.startswith("search") and darwin is not None:
        changes: dict = {}
        for saving in SEARCH_SAVINGS:
            if all(getattr(darwin, k) == v for k, v in saving.items()):
                continue
            changes.update(saving)
            trial = plan_run(spec, darwin.model_copy(update=changes), training, **run)
            if trial.fits_device():
                named = ", ".join(f"{k}: {_yaml(v)}" for k, v in changes.items())
                return (
                    f"set {named} in the DarwinLMModifier (search peak then "
                    f"{trial.device_peak() / GiB:.1f} GiB)"
                )
        return (
            "no memory setting of the search fits it: lower search_seq_len or the "
            "size target, or use a GPU with more memory"
        )
    if worst.name == "post-training" and training is not None:
        return (
            "set gradient_checkpointing: true and train_embeddings: false in the "
            "DarwinLMTrainingModifier, lower seq_len or batch_size, or use a GPU "
            "with more memory"
        )
    return "use a GPU with more memory"


def _host_fix(plan: MemoryPlan, spec: ModelSpec, darwin, run) -> str:
    tokens = run.get("calibration_tokens", 0)
    if darwin is None or not tokens:
        return "use a machine with more memory"
    per_token = spec.shape.hidden_size * spec.element_size
    excess = plan.host_peak() - 0.9 * plan.host_capacity
    fitting = max(0, tokens - int(excess // per_token) - 1)
    seq = max(1, run.get("calibration_seq_len", 1))
    if fitting < seq:  # calibration is not what fills the memory
        return "use a machine with more memory, or a smaller size target"
    return (
        f"lower the calibration samples to at most {fitting // seq:,} of {seq} "
        f"tokens (--num-samples / num_calibration_samples; each token costs "
        f"{per_token:,} bytes of LLM Compressor's activation cache), or use a machine "
        "with more memory"
    )


def _yaml(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _gib(value: int | None) -> float | None:
    return None if value is None else round(value / GiB, 1)


def machine_capacity(model_bytes_loaded: int = 0) -> tuple[str, int | None, int]:
    """(device kind, GPU bytes or None, host bytes) of this machine.

    ``model_bytes_loaded``: host memory the model already holds, which each phase
    counts but psutil no longer reports as available. Under torchrun the ranks of a
    node share its host memory: each gets its share of what is available, and its own
    GPU.
    """
    import os

    import psutil
    import torch

    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    host = psutil.virtual_memory().available // ranks_here + model_bytes_loaded
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_properties(torch.cuda.current_device())
        return "cuda", gpu.total_memory, host
    return "cpu", None, host


def check_run(model, darwin, calibration_tokens: int, calibration_seq_len: int):
    """Refuse, before any calibration, a DarwinLM run of ``model`` that cannot fit
    this machine; returns the plan."""
    spec = ModelSpec.from_model(model)
    on_host = [p for p in model.parameters() if p.device.type == "cpu"]
    loaded = sum(p.numel() * p.element_size() for p in on_host)
    device, gpu, host = machine_capacity(loaded)
    run = dict(
        calibration_tokens=calibration_tokens,
        calibration_seq_len=calibration_seq_len,
        device=device,
        device_capacity=gpu,
        host_capacity=host,
    )
    plan = plan_run(spec, darwin, **run)
    reason = refusal(plan, spec, darwin, **run)
    if reason:
        raise ValueError(f"DarwinLM will not fit: {reason}")
    return plan
