"""DarwinLMModifier: LLM Compressor's lifecycle mapped onto the pipeline's steps.

1. ``on_initialize``: the database store, bound to the model and calibration data
   (:func:`~darwin_modifier.pipeline.open_database`); bad targets fail here.
2. calibration (LLM Compressor's sequential pipeline) -> the database, layer by layer.
3. ``on_finalize``: the search (:func:`~darwin_modifier.pipeline.search`), then the
   winner stitched from the database and the model shrunk in place, so that
   ``oneshot(output_dir=...)`` saves the smaller checkpoint with a truthful config,
   in ``save_dtype`` (default: the dtype the model came in).
"""

from __future__ import annotations

from typing import ClassVar

from llmcompressor.core import Event, State
from llmcompressor.modifiers import Modifier
from loguru import logger

from darwin_modifier.artifacts import combine_row_digests, row_digests
from darwin_modifier.database.assemble import assemble
from darwin_modifier.distributed import gather_objects, require_process_group
from darwin_modifier.memory import check_run
from darwin_modifier.modifier.inplace import shrink_in_place, undo_offloading
from darwin_modifier.modifier.rules import refuse_quantization_in_same_pass
from darwin_modifier.pipeline import DarwinLMConfig, open_database, search

__all__ = ["DarwinLMModifier"]


class DarwinLMModifier(Modifier, DarwinLMConfig):
    """Evolutionary, training-aware structured pruning (DarwinLM). Defaults: the
    paper's.

    Size target: give one of ``target_fraction`` (decoder-block parameters kept),
    ``target_params`` (decoder-block parameters) or ``target_level`` (every module at
    that database level, the paper's way); none means ``target_level: 5``. Fields:
    see :class:`~darwin_modifier.pipeline.DarwinLMConfig`.
    """

    darwinlm_role: ClassVar[str] = "prune"  # for the recipe rules
    requires_calibration_data: bool = True

    def on_initialize(self, state: State, **kwargs) -> bool:
        refuse_quantization_in_same_pass(self)  # quantization must be a later stage
        require_process_group()  # torchrun without one would duplicate everything
        self._given_dtype = next(state.model.parameters()).dtype
        digest, tokens, longest = _calibration_tokens(state)
        check_run(state.model, self, tokens, longest)  # refuse what cannot fit
        self._store, self._builder = open_database(state.model, self, digest)
        return True

    def on_calibration_start(self, state: State, event: Event, **kwargs) -> None:
        for module in self._builder.watched():
            self.register_hook(module, self._builder.hook, "forward")

    def on_sequential_epoch_end(self, state: State, event: Event, modules, **kwargs):
        self._builder.finish_ready_layers(modules)

    def on_calibration_end(self, state: State, event: Event, **kwargs) -> None:
        self.remove_hooks()
        self._builder.finish_all()

    def on_finalize(self, state: State, **kwargs) -> bool:
        # Not in on_calibration_end: LLM Compressor's calibration context is still
        # active there (no grad, LM head disabled), and the search needs both.
        self.remove_hooks()
        try:
            self._store.require_complete()
            if self.generations > 0:
                undo_offloading(state.model)  # light training needs real parameters
            best = search(state.model, self._store, self).best
            if self.shrink:
                plan, overrides = assemble(self._store, best.attn, best.mlp)
                shrink_in_place(state.model, plan, overrides)
                logger.info(
                    f"DarwinLM: decoder blocks {plan.block_params():,} params "
                    f"({plan.kept_fraction():.1%} of dense)"
                )
        finally:
            self._store.close()  # the directory is free for other runs
        state.model.to(self.output_dtype(self._given_dtype))
        return True


def _calibration_tokens(state: State) -> tuple[str, int, int]:
    """Order-independent hash of the calibration token ids of all ranks (oneshot may
    shuffle; torchrun splits them), and this rank's token count and longest sample
    (what its own activation cache holds)."""
    loader = getattr(getattr(state, "data", None), "calib", None)
    if loader is None:
        return "none", 0, 0
    rows = []
    for batch in loader:
        ids = batch["input_ids"] if isinstance(batch, dict) else batch[0]
        rows.extend(ids)
    lengths = [len(r) for r in rows]
    shares = gather_objects(row_digests(rows))
    _refuse_repeated_shares(shares)
    digests = [d for share in shares for d in share]
    return (
        combine_row_digests(digests, ordered=False),
        sum(lengths),
        max(lengths, default=0),
    )


def _refuse_repeated_shares(shares: list[list[str]]) -> None:
    """Refuse ranks that calibrate on the same samples. LLM Compressor 0.14 partitions
    a dataset that is identical on every rank with a sampler over the partition's own
    indices, so every rank reads the first 1/world of the data (seen here on gloo)."""
    seen: dict[tuple, int] = {}
    for rank, share in enumerate(shares):
        key = tuple(sorted(share))
        if key in seen:
            raise ValueError(
                f"ranks {seen[key]} and {rank} calibrate on the same samples "
                "(LLM Compressor 0.14 gives every rank the first part of a dataset "
                "that is identical on all ranks); give oneshot each rank's own share, "
                "e.g. dataset.shard(world_size, rank, contiguous=True), as "
                "darwin-modifier compress does"
            )
        seen[key] = rank
