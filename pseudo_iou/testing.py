"""Small configs for tests and quick experiments (CPU, no pretrained weights)."""
from detectron2.config import CfgNode, get_cfg

from .config import add_pseudo_iou_config

__all__ = ["tiny_pseudo_iou_cfg"]


def tiny_pseudo_iou_cfg(num_classes: int = 3, fpn_channels: int = 64) -> CfgNode:
    """
    A PseudoIoU config that builds in about a second and runs on 64-128 px images on CPU:
    R-18 (trainable BN, no weights), FPN P3-P7 with ``fpn_channels`` channels (a multiple of 64
    keeps GroupNorm(32) valid on a 1x1 P7 with one image), one conv per head tower.
    """
    cfg = get_cfg()
    add_pseudo_iou_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "PseudoIoU"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = "build_anchor_free_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = fpn_channels
    cfg.MODEL.FPN.TOP_BLOCK_IN_FEATURE = "p5"
    cfg.MODEL.PSEUDO_IOU.NUM_CLASSES = num_classes
    cfg.MODEL.PSEUDO_IOU.NUM_CONVS = 1
    return cfg
