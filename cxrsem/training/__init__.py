"""Training: the paper's model families on any registered dataset (``cxrsem train``)."""

from cxrsem.training.loop import (
    DIVERGENCE_FACTOR,
    TrainConfig,
    TrainingInterrupted,
    TrainResult,
    resume,
    train,
)
from cxrsem.training.monitoring import DEFAULT_TENSORBOARD_DIR

__all__ = ["DEFAULT_TENSORBOARD_DIR", "DIVERGENCE_FACTOR", "TrainConfig", "TrainResult",
           "TrainingInterrupted", "train", "resume"]
