"""How a ``target_speedup`` is measured: the serving setup the latency table is for.

Set these to what you will serve: the table's times (and so the speedup the search
aims at) hold for that engine, device, dtype and batch. ``latency_enforce_eager``
follows vLLM's default (compiled); on CPU the compile barely changes a step's time and
makes every timed model start in about two minutes instead of twenty seconds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LatencyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # what the speedup counts: one decode step of the batch, or the batch's prefill
    speedup_mode: Literal["decode", "prefill"] = "decode"
    latency_batch: int = Field(default=16, ge=1)
    latency_input_len: int = Field(default=128, ge=1)
    latency_output_len: int = Field(default=64, ge=2)  # decode steps timed per run
    latency_repeats: int = Field(default=3, ge=1)  # best of this many runs per model
    latency_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    latency_enforce_eager: bool = False
    # a table to use as it is (its identity is checked); default: the database's own
    latency_table: str | None = None
    # the serve environment's python, which times the models on vLLM; default: the
    # DARWIN_SERVE_PYTHON environment variable, or this python if it has vLLM
    serve_python: str | None = None

    def latency_settings(self) -> dict:
        """What the times depend on (besides the models, engine and device)."""
        return {
            "batch": self.latency_batch,
            "input_len": self.latency_input_len,
            "output_len": self.latency_output_len,
            "repeats": self.latency_repeats,
            "dtype": self.latency_dtype,
            "enforce_eager": self.latency_enforce_eager,
        }
