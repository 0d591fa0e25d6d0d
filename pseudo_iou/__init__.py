"""Pseudo-IoU for anchor-free detection (Li et al., 2021) on Detectron2."""
from .assignment import PointAssigner, pairwise_pseudo_iou, pseudo_iou
from .config import add_pseudo_iou_config
from .detector import PseudoIoU  # registers the meta-architecture

__all__ = [
    "add_pseudo_iou_config",
    "PseudoIoU",
    "PointAssigner",
    "pseudo_iou",
    "pairwise_pseudo_iou",
]
