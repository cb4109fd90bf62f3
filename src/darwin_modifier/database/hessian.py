"""Input statistics of ``o_proj`` / ``down_proj``: fp32 running-average Hessians.

The accumulation itself is LLM Compressor's SparseGPT helper (H = 2/N Σ xᵀx as a
running average over calibration samples); this module only owns the per-module state
and the forward hook that feeds it.
"""

from __future__ import annotations

import torch
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import (
    accumulate_hessian,
    make_empty_hessian,
)
from torch import nn


class HessianAccumulator:
    """One Hessian per watched module, filled by :meth:`hook` during calibration."""

    def __init__(self) -> None:
        self.hessians: dict[nn.Module, torch.Tensor] = {}
        self.samples: dict[nn.Module, int] = {}

    def hook(self, module: nn.Module, args: tuple, _output) -> None:
        """A forward hook (``register_forward_hook`` signature)."""
        if module not in self.hessians:
            self.hessians[module] = make_empty_hessian(module)
            self.samples[module] = 0
        self.hessians[module], self.samples[module] = accumulate_hessian(
            args[0].detach(), module, self.hessians[module], self.samples[module]
        )

    def pop(self, module: nn.Module) -> tuple[torch.Tensor, int]:
        """The finished Hessian of ``module`` and its sample count; frees its memory
        here."""
        if module not in self.hessians:
            raise RuntimeError(
                "no calibration data reached this module; "
                "is it part of the forward pass?"
            )
        return self.hessians.pop(module), self.samples.pop(module)
