"""The memory savings change nothing a user sees: the chunked loss, gradient
checkpointing and frozen embeddings give the same numbers as the plain computation."""

from __future__ import annotations

import torch

from darwin_modifier.search.config import SearchConfig
from darwin_modifier.training import losses
from darwin_modifier.training.config import OptimConfig
from darwin_modifier.training.trainer import embedding_parameters, train
from tests.conftest import tiny_model

IDS = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))


def loss_and_grads(model) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = losses.causal_lm_loss(model, IDS)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_the_chunked_loss_equals_the_whole_one(monkeypatch):
    model = tiny_model("llama")
    whole, whole_grads = loss_and_grads(model)
    reference = torch.nn.functional.cross_entropy(
        model(IDS).logits[:, :-1].reshape(-1, 128), IDS[:, 1:].reshape(-1)
    )
    torch.testing.assert_close(whole, reference.detach())
    monkeypatch.setattr(losses, "tokens_per_chunk", lambda vocab: 5)  # 46 tokens: 10
    chunked, chunked_grads = loss_and_grads(model)
    torch.testing.assert_close(chunked, whole)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, msg=name)


def trained(**settings) -> dict[str, torch.Tensor]:
    model = tiny_model("llama")
    config = OptimConfig(learning_rate=1e-3, bf16_autocast=False, **settings)
    train(model, [IDS[:1], IDS[1:], IDS[:1]], config)
    assert all(p.requires_grad for p in model.parameters())  # restored
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_frozen_embeddings_and_checkpointing_train_the_blocks_alike():
    start = {k: v.clone() for k, v in tiny_model("llama").state_dict().items()}
    plain = trained()
    frozen = trained(train_embeddings=False)
    checkpointed = trained(train_embeddings=False, gradient_checkpointing=True)
    embeddings = {"model.embed_tokens.weight", "lm_head.weight"}
    for name in embeddings:
        assert frozen[name].equal(start[name])
        assert not plain[name].equal(start[name])
    for name, value in frozen.items():
        torch.testing.assert_close(checkpointed[name], value, msg=name)
        if name.startswith("model.layers.") and name.endswith("proj.weight"):
            assert not value.equal(start[name]), name


def test_the_search_passes_its_memory_settings_to_light_training():
    config = SearchConfig(gradient_checkpointing=True, train_embeddings=False)
    optim = config.light_training()
    assert optim.gradient_checkpointing and not optim.train_embeddings
    assert optim.learning_rate == config.learning_rate


def test_embedding_parameters_tied_and_untied():
    tied = tiny_model("llama", tie_word_embeddings=True)
    assert [p for p in embedding_parameters(tied)] == [tied.lm_head.weight]
    untied = tiny_model("llama", tie_word_embeddings=False)
    assert {id(p) for p in embedding_parameters(untied)} == {
        id(untied.lm_head.weight),
        id(untied.model.embed_tokens.weight),
    }
