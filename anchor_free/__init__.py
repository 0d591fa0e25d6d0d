"""Pieces both detectors share: config keys, the P3-P7 backbone, the dense head, cross-worker
normalisers, the built-in demo dataset and the training engine (Trainer, CPU launch)."""
from . import backbone as _backbone  # noqa: F401  (registers the backbone builder)
from .config import add_anchor_free_config
from .distributed import reduce_mean
from .head import AnchorFreeHead, Scale

__all__ = ["add_anchor_free_config", "reduce_mean", "AnchorFreeHead", "Scale"]
