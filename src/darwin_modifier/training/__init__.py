"""One trainer for the search's light training and for post-compression training."""

from darwin_modifier.training.config import OptimConfig, PostTrainConfig
from darwin_modifier.training.losses import causal_lm_loss, distillation_loss
from darwin_modifier.training.trainer import Trainer, train

__all__ = [
    "OptimConfig",
    "PostTrainConfig",
    "Trainer",
    "causal_lm_loss",
    "distillation_loss",
    "train",
]
