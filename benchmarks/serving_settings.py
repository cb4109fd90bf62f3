"""What one serving-speed run does: sizes, rounds, engine options, quiet-machine rule.

A frozen dataclass, so a run's settings travel to the worker processes as they are and
land verbatim in the JSON result (``dataclasses.asdict``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["QUICK", "SpeedSettings", "with_overrides"]


@dataclass(frozen=True)
class SpeedSettings:
    """What one benchmark run does (recorded verbatim in the result)."""

    batch: int = 64
    input_len: int = 128
    output_len: int = 128
    latency_input_len: int = 128
    latency_output_len: int = 128
    latency_iters: int = 3  # single-sequence runs per round (best one kept)
    rounds: int = 3  # alternations dense/pruned
    # Extra rounds (up to max_rounds) while a model has fewer than 2 clean samples,
    # "clean" = other processes used < quiet_cores cores while it ran.
    max_rounds: int = 6
    dtype: str = "bfloat16"
    kv_cache_gib: int = 2  # VLLM_CPU_KVCACHE_SPACE per engine (CPU only)
    enforce_eager: bool = False  # True: no inductor compile (fast start, slower run)
    max_num_batched_tokens: int | None = None  # None: vLLM's default
    seed: int = 0
    # Before each timed sample, wait up to quiet_wait_s seconds for other processes
    # on the machine to use less than quiet_cores cores (0 disables the wait).
    quiet_wait_s: float = 30.0
    quiet_cores: float = 0.3
    # LD_PRELOAD Intel OpenMP / tcmalloc where found, as vLLM's CPU guide advises
    preload: bool = False
    # Also held-out perplexity from vLLM's prompt logprobs (0 windows: skip), after the
    # timed rounds: e.g. a quantized checkpoint next to the one it was made from.
    ppl_windows: int = 0
    ppl_seq_len: int = 512

    @property
    def max_model_len(self) -> int:
        return max(
            self.input_len + self.output_len,
            self.latency_input_len + self.latency_output_len,
            self.ppl_seq_len + 1 if self.ppl_windows else 0,
        )


# Small enough for tests and demos: a couple of minutes for both models on 2 cores.
QUICK = SpeedSettings(
    batch=16,
    input_len=64,
    output_len=64,
    latency_input_len=64,
    latency_output_len=64,
    latency_iters=2,
    rounds=2,
    max_rounds=3,
    enforce_eager=True,
    quiet_wait_s=10.0,
)


def with_overrides(settings: SpeedSettings, **changes) -> SpeedSettings:
    """``settings`` with the non-None ``changes`` applied (unset CLI flags are None)."""
    return replace(settings, **{k: v for k, v in changes.items() if v is not None})
