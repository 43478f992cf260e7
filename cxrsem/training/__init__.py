"""Training: the paper's model families on any registered dataset (``cxrsem train``)."""

from cxrsem.training.loop import TrainConfig, TrainResult, resume, train

__all__ = ["TrainConfig", "TrainResult", "train", "resume"]
