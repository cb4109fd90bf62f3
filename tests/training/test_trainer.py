"""The trainer: it learns, distillation approaches the teacher, and resume is exact."""

from __future__ import annotations

import pytest
import torch

from darwin_modifier.evaluation.quality import evaluate
from darwin_modifier.format.shrink import shrink
from darwin_modifier.plan import DenseShape, LayerPlan, Plan
from darwin_modifier.training.config import OptimConfig, PostTrainConfig
from darwin_modifier.training.losses import distillation_loss
from darwin_modifier.training.posttrain import post_train
from darwin_modifier.training.trainer import Trainer
from tests.conftest import tiny_model

OPTIM = dict(
    learning_rate=3e-3,
    warmup_steps=2,
    schedule="cosine",
    max_grad_norm=1.0,
    bf16_autocast=False,
)


def data(seed: int, n: int) -> torch.Tensor:
    """Learnable token windows: a repeated random pattern with a little noise."""
    gen = torch.Generator().manual_seed(seed)
    pattern = torch.randint(0, 128, (8,), generator=gen)
    windows = pattern.repeat(n, 4)
    noise = torch.rand(windows.shape, generator=gen) < 0.1
    return torch.where(
        noise, torch.randint(0, 128, windows.shape, generator=gen), windows
    )


def small_model():
    dense = tiny_model("llama")
    plan = Plan(
        DenseShape.from_config(dense.config), [LayerPlan((0, 1, 4, 5), range(48))] * 4
    )
    return dense, shrink(dense, plan)


def test_training_lowers_heldout_loss(tmp_path):
    _, model = small_model()
    train_windows, heldout = data(0, 24), data(0, 4)[:, 1:]
    before = evaluate({"m": model}, heldout, reference=None)["m"]["ppl"]
    settings = PostTrainConfig(tokens=24 * 32, batch_size=2, **OPTIM)
    history = post_train(model, train_windows, settings, tmp_path, eval_windows=heldout)
    assert history["eval"][-1]["ppl"] < 0.7 * before
    assert history["eval"][0]["ppl"] == pytest.approx(before)


def test_distillation_lowers_kl_to_teacher(tmp_path):
    teacher, model = small_model()
    windows = torch.randint(
        0, 128, (24, 32), generator=torch.Generator().manual_seed(5)
    )
    heldout = windows[-4:]
    before = evaluate({"t": teacher, "m": model}, heldout, reference="t")["m"]["kl"]
    optim = OptimConfig(learning_rate=1e-2, max_grad_norm=1.0, bf16_autocast=False)
    settings = PostTrainConfig(tokens=40 * 32, loss="kd", **optim.model_dump())
    post_train(model, windows[:40], settings, tmp_path, teacher=teacher)
    after = evaluate({"t": teacher, "m": model}, heldout, reference="t")["m"]["kl"]
    assert after < 0.8 * before


def uninterrupted_run(windows, checkpoint_every: int, out):
    """8 steps of 2 windows without a break: what every resumed run must equal."""
    settings = PostTrainConfig(
        tokens=16 * 32, batch_size=2, checkpoint_every=checkpoint_every, **OPTIM
    )
    _, model = small_model()
    post_train(model, windows, settings, out)
    return settings, model


def assert_same_weights(expected, got) -> None:
    for (name, a), b in zip(expected.state_dict().items(), got.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_resume_continues_the_same_run(tmp_path, monkeypatch):
    windows = data(1, 16)
    settings, uninterrupted = uninterrupted_run(windows, 2, tmp_path / "a")

    _, killed = small_model()
    real_step = Trainer.train_step
    calls = {"n": 0}

    def dying_step(self, ids):
        calls["n"] += 1
        if calls["n"] == 6:  # dies during step 6: the last checkpoint is step 4
            raise KeyboardInterrupt
        return real_step(self, ids)

    monkeypatch.setattr(Trainer, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        post_train(killed, windows, settings, tmp_path / "b")
    monkeypatch.setattr(Trainer, "train_step", real_step)
    _, resumed = small_model()  # a fresh process would start from the untrained model
    history = post_train(resumed, windows, settings, tmp_path / "b")
    assert len(history["loss"]) == 8
    assert_same_weights(uninterrupted, resumed)


def test_kd_without_teacher_is_refused(tmp_path):
    _, model = small_model()
    with pytest.raises(ValueError, match="needs the dense teacher"):
        post_train(model, data(0, 4), PostTrainConfig(loss="kd"), tmp_path)


def test_a_hook_stops_the_run_and_the_rest_resumes(tmp_path):
    windows = data(2, 16)
    settings, uninterrupted = uninterrupted_run(windows, 100, tmp_path / "a")

    _, stopped = small_model()
    seen = []

    def stop_at_three(step: int, loss: float) -> bool:
        seen.append(step)
        return step == 3

    history = post_train(
        stopped, windows, settings, tmp_path / "b", on_step=stop_at_three
    )
    assert seen == [1, 2, 3] and len(history["loss"]) == 3
    _, resumed = small_model()
    history = post_train(resumed, windows, settings, tmp_path / "b")
    assert len(history["loss"]) == 8
    assert_same_weights(uninterrupted, resumed)


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    settings, _ = uninterrupted_run(data(3, 16), 2, tmp_path)
    _, model = small_model()
    with pytest.raises(ValueError, match="another run.*delete it"):
        post_train(model, data(4, 16), settings, tmp_path)  # other training text


def test_topk_distillation_is_the_k_plus_rest_kl():
    """kd_topk compares the teacher's k most likely tokens and one bucket for the
    rest (the search's top-k KL), and its gradient reaches the student."""
    teacher, student = small_model()
    ids = data(6, 2)
    k = 8
    loss = distillation_loss(teacher, topk=k)(student, ids)
    with torch.no_grad():
        p = teacher(ids).logits.double().log_softmax(-1)
    q = student(ids).logits.double().log_softmax(-1)
    top = p.topk(k, dim=-1).indices
    rest = torch.ones_like(p, dtype=torch.bool).scatter(-1, top, False)

    def buckets(lp):
        kept = lp.gather(-1, top)
        return torch.cat(
            [kept, lp.masked_fill(~rest, -torch.inf).logsumexp(-1)[..., None]], -1
        )

    bp, bq = buckets(p), buckets(q)
    expected = (bp.exp() * (bp - bq)).sum(-1).mean()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
