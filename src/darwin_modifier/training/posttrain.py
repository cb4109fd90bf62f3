"""Post-compression training: recover quality of the shrunk model on a token budget.

Checkpoints (model, optimizer, schedule, step) every ``checkpoint_every`` steps; a
restarted run loads the last one and skips the batches it already saw, so it continues
the same run. The trained model is saved in the same checkpoint format as the input.
"""

from __future__ import annotations

from pathlib import Path

import torch
from loguru import logger
from torch import nn
from tqdm.auto import tqdm

from darwin_modifier.artifacts import (
    holding,
    replacing,
    require_same,
    tokens_digest,
    weights_digest,
    write_json,
)
from darwin_modifier.evaluation.quality import evaluate
from darwin_modifier.training.config import PostTrainConfig
from darwin_modifier.training.losses import causal_lm_loss, distillation_loss
from darwin_modifier.training.trainer import StepHook, Trainer

CHECKPOINT = "trainer_checkpoint.pt"


def post_train(
    model: nn.Module,
    train_windows: torch.Tensor,
    settings: PostTrainConfig,
    out_dir: str | Path,
    teacher: nn.Module | None = None,
    eval_windows: torch.Tensor | None = None,
    on_step: StepHook | None = None,
) -> dict:
    """Train ``model`` in place; returns the history (losses and evaluations).

    ``on_step(step, loss)`` is called after each step's bookkeeping; returning True
    stops the run there (its checkpoint is written first, so it can resume).
    """
    out_dir = Path(out_dir)
    with holding(out_dir, "train_dir"):
        return _post_train(
            model, train_windows, settings, out_dir, teacher, eval_windows, on_step
        )


def _post_train(
    model: nn.Module,
    train_windows: torch.Tensor,
    settings: PostTrainConfig,
    out_dir: Path,
    teacher: nn.Module | None,
    eval_windows: torch.Tensor | None,
    on_step: StepHook | None,
) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings.loss == "kd" and teacher is None:
        raise ValueError("loss 'kd' needs the dense teacher model (teacher=...)")
    loss_fn = (
        distillation_loss(teacher, settings.kd_topk, settings.ce_weight)
        if settings.loss == "kd"
        else causal_lm_loss
    )
    seq = train_windows.shape[1]
    steps = min(
        len(train_windows) // settings.batch_size,
        settings.tokens // (seq * settings.batch_size),
    )
    if steps < 1:
        raise ValueError(
            f"{settings.tokens} tokens in batches of {settings.batch_size} x {seq} "
            "make no "
            f"step (or only {len(train_windows)} windows available)"
        )
    identity = _run_identity(model, train_windows, settings)
    trainer = Trainer(model, settings, steps, loss_fn)
    history = {"settings": settings.training_settings(), "loss": [], "eval": []}
    checkpoint = out_dir / CHECKPOINT
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        require_same(
            state.get("identity", {}),
            identity,
            what=f"{checkpoint} belongs to another run",
            fix="delete it, or give this run another output directory (train_dir)",
        )
        trainer.load_state_dict(state["trainer"])
        history = state["history"]
        logger.info(f"post-training: resuming at step {trainer.step} of {steps}")
    elif eval_windows is not None:
        history["eval"].append({"step": 0, **_evaluate(model, teacher, eval_windows)})

    batches = train_windows[: steps * settings.batch_size].split(settings.batch_size)
    bar = tqdm(total=steps, initial=trainer.step, desc="post-training")

    def after_step(step: int, loss: float) -> bool:
        history["loss"].append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if (
            eval_windows is not None
            and settings.eval_every
            and step % settings.eval_every == 0
        ):
            history["eval"].append(
                {"step": step, **_evaluate(model, teacher, eval_windows)}
            )
        stop = bool(on_step is not None and on_step(step, loss))
        if stop or step % settings.checkpoint_every == 0 or step == steps:
            _save_checkpoint(checkpoint, trainer, history, identity)
        return stop

    trainer.run(batches[trainer.step :], after_step)
    bar.close()
    if eval_windows is not None and (
        not history["eval"] or history["eval"][-1]["step"] != trainer.step
    ):
        history["eval"].append(
            {"step": trainer.step, **_evaluate(model, teacher, eval_windows)}
        )
    write_json(out_dir / "posttrain_history.json", history)
    return history


def _evaluate(model, teacher, windows) -> dict:
    if teacher is None:
        return evaluate({"model": model}, windows, reference=None)["model"]
    return evaluate({"teacher": teacher, "model": model}, windows, reference="teacher")[
        "model"
    ]


def _save_checkpoint(path: Path, trainer: Trainer, history: dict, identity) -> None:
    state = {"trainer": trainer.state_dict(), "history": history, "identity": identity}
    with replacing(path) as partial:
        torch.save(state, partial)


def _run_identity(
    model: nn.Module, windows: torch.Tensor, settings: PostTrainConfig
) -> dict:
    """What a resumed run must share with the one it continues: the starting weights
    (a fingerprint of every tensor), the text and
    the settings that shape the schedule (not how often it evaluates or saves)."""
    return {
        "weights": weights_digest(model),
        "windows": tokens_digest(windows),
        "settings": settings.schedule_identity(),
    }
