"""One trainer for the search's light training and for post-compression training."""

from darwin_modifier.training.losses import causal_lm_loss, distillation_loss
from darwin_modifier.training.trainer import Trainer, TrainSettings, train

__all__ = ["TrainSettings", "Trainer", "causal_lm_loss", "distillation_loss", "train"]
