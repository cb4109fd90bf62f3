"""Calibration -> database, one decoder layer at a time.

The caller (the modifier, inside LLM Compressor's sequential pipeline) attaches
:meth:`DatabaseBuilder.hook` to the modules of :meth:`watched` as forward hooks. Inputs
come from the dense model: the modifier changes no weight during calibration, so the
activations the pipeline propagates are the dense ones (method.md §1). As soon as a
layer's two Hessians are complete (the pipeline signals the end of its subgraph), the
layer is pruned at every level and written; its Hessians are freed.

Under torchrun every rank calibrates on its own share of the data (see
:func:`~darwin_modifier.modifier.chain.calibration_share`); a finished layer's Hessians
are pooled on its owner rank (layer index modulo the world size), which alone runs OBS
and writes the layer file. The stats of layers written during one subgraph are gathered
at the next, so an owner's OBS overlaps the other ranks' calibration of the next
subgraph; the main rank lists them in the manifest.
"""

from __future__ import annotations

import torch
from loguru import logger
from torch import nn

from darwin_modifier.database.hessian import HessianAccumulator
from darwin_modifier.database.prune import prune_layer
from darwin_modifier.database.store import DatabaseStore
from darwin_modifier.distributed import (
    barrier,
    gather_objects,
    reduce_weighted_mean,
    world_size,
)


class DatabaseBuilder:
    def __init__(
        self, model: nn.Module, store: DatabaseStore, gqa_mode: str, damp: float
    ):
        self.store = store
        self.gqa_mode = gqa_mode
        self.damp = damp
        self.accumulator = HessianAccumulator()
        self._written: dict[int, dict] = {}  # layer files this rank wrote, unlisted
        self._pending: dict[int, tuple[nn.Module, nn.Module]] = {
            i: (layer.self_attn.o_proj, layer.mlp.down_proj)
            for i, layer in enumerate(model.model.layers)
            if i not in store.done_layers()
        }
        if store.done_layers():
            logger.info(
                f"database at {store.root}: resuming, {len(store.done_layers())} of "
                f"{store.shape.num_layers} layers already built"
            )

    def watched(self) -> list[nn.Module]:
        """Modules whose inputs are still needed."""
        return [m for pair in self._pending.values() for m in pair]

    def hook(self, module: nn.Module, args: tuple, output) -> None:
        self.accumulator.hook(module, args, output)

    def finish_ready_layers(self, modules: list[nn.Module] | None = None) -> None:
        """Prune and store every pending layer whose inputs were all seen.

        With ``modules`` (the subgraph the pipeline just calibrated), only layers inside
        it count as complete; without, every layer with both Hessians is.
        """
        self._record_written()  # layers other ranks pruned during the last subgraph
        inside = None
        if modules is not None:
            inside = {id(sub) for m in modules for sub in m.modules()}
        for index in sorted(self._pending):
            o_proj, down_proj = self._pending[index]
            seen = all(m in self.accumulator.hessians for m in (o_proj, down_proj))
            if seen and (inside is None or id(down_proj) in inside):
                self._finish(index, o_proj, down_proj)
        if world_size() == 1:
            self._record_written()

    def finish_all(self) -> None:
        self.finish_ready_layers()
        self._record_written()
        barrier()  # every layer file is on disk before any rank reads the database
        if self._pending:
            raise RuntimeError(
                f"calibration never reached layers {sorted(self._pending)}; "
                "the database cannot be completed"
            )

    def _record_written(self) -> None:
        written: dict[int, dict] = {}
        for part in gather_objects(self._written):
            written.update(part)
        self._written = {}
        self.store.record_layers(written)

    def _finish(self, index: int, o_proj: nn.Module, down_proj: nn.Module) -> None:
        # One thread for the OBS loop: its many small ops run 5-30x slower with two
        # threads on a busy CPU (measured), and not faster on a quiet one.
        threads = torch.get_num_threads()
        if o_proj.weight.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            self._prune_and_store(index, o_proj, down_proj)
        finally:
            torch.set_num_threads(threads)

    def _prune_and_store(self, index: int, o_proj: nn.Module, down_proj: nn.Module):
        del self._pending[index]
        owner = index % world_size()
        pooled = [
            reduce_weighted_mean(*self.accumulator.pop(module), owner)
            for module in (o_proj, down_proj)
        ]
        if pooled[0] is None:
            return  # another rank owns this layer
        levels, stats = prune_layer(
            o_proj.weight.data,
            pooled[0][0],
            down_proj.weight.data,
            pooled[1][0],
            self.store.shape,
            self.store.ladders,
            self.gqa_mode,
            self.damp,
        )
        self.store.write_layer_file(index, levels)
        self._written[index] = stats
        logger.debug(f"database layer {index} written")
