"""ResNet + FPN P3-P7 backbone for both detectors, with the P6/P7 input configurable.

Detectron2's ``build_retinanet_resnet_fpn_backbone`` always takes P6 from C5 ("res5"); FCOS and
the Pseudo-IoU release take it from P5 (mmdet FPN ``extra_convs_on_inputs=False`` in
configs/pseudo-iou/piou_r50_caffe_fpn_gn-head_1x_coco.py of
SHI-Labs/Pseudo-IoU-for-Anchor-Free-Object-Detection), the AutoAssign release from C5 (its net.py
``build_backbone`` calls cvpods' ``build_retinanet_resnet_fpn_backbone``; see docs/design.md,
"P6 of AutoAssign").
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone

__all__ = ["build_anchor_free_resnet_fpn_backbone", "compiled_ops_available", "check_compiled_ops"]


def compiled_ops_available() -> bool:
    """False on the pb1-detectron2 fallback install (no ``detectron2/_C`` extension)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "FALLBACK_BUILD", False)


def check_compiled_ops(cfg) -> None:
    """Fail at build time, with the reason, when the config needs deformable convolution but
    this Detectron2 has no compiled ops (it would otherwise fail at the first forward)."""
    if any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE) and not compiled_ops_available():
        raise RuntimeError(
            "This config uses deformable convolution (MODEL.RESNETS.DEFORM_ON_PER_STAGE="
            f"{list(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE)}), which needs Detectron2's compiled "
            "ops, but the installed Detectron2 has none (pb1-detectron2 fallback). Install official "
            "Detectron2 with its C++/CUDA extension (README.md, 'Set-up'), or set "
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE to all False."
        )


@BACKBONE_REGISTRY.register()
def build_anchor_free_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """
    ResNet (``MODEL.RESNETS``) + FPN (``MODEL.FPN``) with P6 = conv3x3 s2 on
    ``MODEL.FPN.TOP_BLOCK_IN_FEATURE`` ("p5" or "res5") and P7 = conv3x3 s2 on ReLU(P6).
    """
    check_compiled_ops(cfg)
    in_feature = cfg.MODEL.FPN.TOP_BLOCK_IN_FEATURE
    if in_feature not in ("p5", "res5"):
        raise ValueError(
            f"MODEL.FPN.TOP_BLOCK_IN_FEATURE must be 'p5' or 'res5', got {in_feature!r}"
        )
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    in_channels_p6p7 = (
        out_channels if in_feature == "p5" else bottom_up.output_shape()["res5"].channels
    )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(in_channels_p6p7, out_channels, in_feature=in_feature),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
