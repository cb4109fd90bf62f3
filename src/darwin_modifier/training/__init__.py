"""One trainer for the search's light training and for post-compression training."""

from darwin_modifier.training.trainer import TrainSettings, train

__all__ = ["TrainSettings", "train"]
