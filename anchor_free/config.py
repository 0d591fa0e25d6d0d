"""Config keys shared by both detectors (added by ``add_pseudo_iou_config`` and
``add_autoassign_config``)."""
from detectron2.config import CfgNode as CN

__all__ = ["add_anchor_free_config"]


def add_anchor_free_config(cfg: CN) -> None:
    """Add the keys both detectors share to ``cfg`` in place. Safe to call twice."""
    # Input of the P6/P7 top block of "build_anchor_free_resnet_fpn_backbone": "p5" (FCOS and
    # Pseudo-IoU release, mmdet extra_convs_on_inputs=False) or "res5" (RetinaNet and AutoAssign
    # release, P6 = conv on C5).
    if "TOP_BLOCK_IN_FEATURE" not in cfg.MODEL.FPN:
        cfg.MODEL.FPN.TOP_BLOCK_IN_FEATURE = "p5"
