"""The model code both detectors share: config keys, the P3-P7 backbone, the dense head, the
base meta-architecture, the in-box (point, box) pairs and cross-worker normalisers. Imports
Detectron2 only (the application layer is ``anchor_free_app``)."""
from . import backbone as _backbone  # noqa: F401  (registers the backbone builder)
from .config import add_anchor_free_config
from .distributed import reduce_mean
from .head import AnchorFreeHead, Scale

__all__ = ["add_anchor_free_config", "reduce_mean", "AnchorFreeHead", "Scale"]
