"""One working model whose blocks follow a genome; candidates differ by swapped blocks.

The authors deep-copy the whole model per candidate and reload changed modules from
disk. Here a single shrunk model is kept: moving to another genome rebuilds only the
blocks whose level changed (sliced from the dense weights and the memory-mapped
database), and after a candidate's light training every parameter is restored in place
from an in-memory copy of its untrained value. Memory: the dense model (read only), one
shrunk model, and its untrained copy.

The working model is fp32 whatever the dense model's dtype: an AdamW step at the
paper's lr 1e-5 is below half the spacing of most bf16 weights and would round away,
leaving "training-aware" selection untrained on every bf16 hub model. The untrained
copy stays in the dense dtype (its values come from there, so nothing is lost), and
the fitness forward pass computes in the dense dtype under autocast.

Where things live (the memory plan, :mod:`darwin_modifier.memory`, counts the same):
the working model on the execution ``device``; the dense weights it slices blocks
from, and the untrained copy, in host memory (pinned when the device is a GPU), so
that the GPU holds only what trains. With ``train_embeddings=False`` the embeddings and
LM head stay in the dense dtype and are never restored (they never change).
"""

from __future__ import annotations

import torch
from torch import nn

from darwin_modifier.database.assemble import assemble
from darwin_modifier.database.store import DatabaseStore
from darwin_modifier.format.shrink import block_state, shrink
from darwin_modifier.plan import LayerPlan, attention_layout
from darwin_modifier.search.genome import Genome
from darwin_modifier.training.trainer import embedding_parameters

_BLOCK_KEYS = {
    "attn": ("self_attn.", "input_layernorm."),
    "mlp": ("mlp.", "post_attention_layernorm."),
}


class Workbench:
    def __init__(
        self,
        dense: nn.Module,
        store: DatabaseStore,
        genome: Genome,
        *,
        device: torch.device | str | None = None,
        train_embeddings: bool = True,
    ):
        self.dense_state = dense.state_dict()
        self.store = store
        self.genome = genome
        self.device = torch.device(device or next(dense.parameters()).device)
        plan, overrides = assemble(store, genome.attn, genome.mlp)
        self.model = shrink(dense, plan, overrides)
        self.model.config.use_cache = False
        self.source_dtype = next(self.model.parameters()).dtype
        frozen = set() if train_embeddings else _names_of(self.model)
        self._pristine = {
            k: self._host_copy(v)
            for k, v in self.model.state_dict().items()
            if k not in frozen
        }
        self.model.to(self.device)
        for name, param in self.model.named_parameters():
            if name not in frozen:
                param.data = param.data.float()

    def _host_copy(self, tensor: torch.Tensor) -> torch.Tensor:
        copy = tensor.detach().to("cpu", self.source_dtype, copy=True)
        return copy.pin_memory() if self.device.type == "cuda" else copy

    @torch.no_grad()
    def load(self, genome: Genome) -> nn.Module:
        """The model of ``genome`` with untrained (database) weights."""
        for kind, i in self.genome.changed(genome):
            self._swap(i, kind, genome.levels(kind)[i])
        self.genome = genome
        self.restore()
        return self.model

    @torch.no_grad()
    def restore(self) -> None:
        """Undo training: every parameter back to its untrained value, in place."""
        state = self.model.state_dict()
        for name, value in self._pristine.items():
            state[name].copy_(value, non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _swap(self, index: int, kind: str, level: int) -> None:
        config = self.model.config
        entry = self.store.entry(index, kind, level)
        shape = self.store.shape
        if kind == "attn":
            layer_plan = LayerPlan(entry.kept, ())
            q_order, kv_order = attention_layout(layer_plan, shape)
            config.layer_num_attention_heads[index] = len(q_order)
            config.layer_num_key_value_heads[index] = len(kv_order)
        else:
            layer_plan = LayerPlan((), entry.kept)
            config.layer_intermediate_size[index] = len(entry.kept)
        layer = self.model.model.layers[index]
        prefix = f"model.layers.{index}."
        overrides = {}
        if entry.weight is not None:
            overrides[(index, "o_proj" if kind == "attn" else "down_proj")] = (
                entry.weight
            )
        state = block_state(
            self.dense_state, prefix, layer_plan, shape, kind, overrides, index
        )
        for key in [k for k in self._pristine if k.startswith(prefix)]:
            if key[len(prefix) :].startswith(_BLOCK_KEYS[kind]):
                del self._pristine[key]
        with torch.device("meta"):
            layer.resize(config, index, cache_idx=index)  # no KV cache in the search
        if state:
            # copies, never views: unsliced tensors (norms) would alias the dense
            # model, and the untrained copy must not alias what trains
            working = {
                k: v.to(self.device, torch.float32, copy=True) for k, v in state.items()
            }
            layer.load_state_dict(working, strict=False, assign=True)
            for k, v in state.items():
                self._pristine[prefix + k] = self._host_copy(v)


def _names_of(model: nn.Module) -> set[str]:
    """State-dict names of the embeddings and LM head (both names when tied)."""
    frozen = {id(p) for p in embedding_parameters(model)}
    return {
        name
        for name, p in model.named_parameters(remove_duplicate=False)
        if id(p) in frozen
    }
