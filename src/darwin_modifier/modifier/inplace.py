"""Turn the dense model object that oneshot holds into the shrunk model, in place.

``oneshot`` saves the object it was given, so the result must be that object. The
decoder layers, config and class are taken over from :func:`shrink`'s new model;
embeddings, final norm and LM head stay as they are (pruning never touches them).
"""

from __future__ import annotations

from torch import nn

from darwin_modifier.format.shrink import WeightOverrides, shrink
from darwin_modifier.plan import Plan


def shrink_in_place(model: nn.Module, plan: Plan, overrides: WeightOverrides) -> None:
    small = shrink(model, plan, overrides)
    model.model.layers = small.model.layers
    model.model.rotary_emb = small.model.rotary_emb
    model.__class__ = type(small)
    model.model.__class__ = type(small.model)
    model.config = model.model.config = small.config
    # LLM Compressor's save re-reads config.json from ``_name_or_path`` and keeps the
    # dense sizes; an empty path makes it keep the truthful, transformers-written one.
    model.config._name_or_path = ""


def undo_offloading(model: nn.Module) -> None:
    """Put the whole model on the main device as plain parameters.

    LLM Compressor's pipelines offload every module (``set_onload_device``) and leave
    it so: each parameter read then gives a fresh copy on the onload device, which an
    optimizer cannot train (on a GPU the copy has no grad and never reaches the stored
    weight). The search and post-training need real, trainable parameters on one
    device; ``oneshot``'s save takes the model either way.
    """
    from compressed_tensors.offload import remove_dispatch
    from llmcompressor.utils.dev import get_main_device

    remove_dispatch(model)
    model.to(get_main_device())
