"""Training: the paper's model families on any registered dataset (``cxrsem train``)."""

from cxrsem.training.loop import (
    DIVERGENCE_FACTOR,
    TrainConfig,
    TrainingInterrupted,
    TrainResult,
    resume,
    train,
)

__all__ = ["DIVERGENCE_FACTOR", "TrainConfig", "TrainResult", "TrainingInterrupted", "train", "resume"]
