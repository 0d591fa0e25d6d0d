"""ResNet + FPN P3-P7 backbone for both detectors, with the P6/P7 input configurable.

Detectron2's ``build_retinanet_resnet_fpn_backbone`` always takes P6 from C5 ("res5"); FCOS and
the Pseudo-IoU release take it from P5 (mmdet FPN ``extra_convs_on_inputs=False`` in
configs/pseudo-iou/piou_r50_caffe_fpn_gn-head_1x_coco.py of
SHI-Labs/Pseudo-IoU-for-Anchor-Free-Object-Detection), the AutoAssign release from C5 (its net.py
``build_backbone`` calls cvpods' ``build_retinanet_resnet_fpn_backbone``; see docs/design.md,
"P6 of AutoAssign").
"""
from typing import List, Sequence

from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from detectron2.modeling.backbone.resnet import (
    DeformBottleneckBlock,
    ResNet,
    build_resnet_backbone,
)

__all__ = [
    "build_anchor_free_resnet_fpn_backbone",
    "compiled_ops_available",
    "check_compiled_ops",
    "resnet_stages",
]

DEFORM_KEY = "MODEL.RESNETS.DEFORM_ON_PER_STAGE (Python config: " \
    "model.backbone.bottom_up.stages.deform_on_per_stage)"


def compiled_ops_available() -> bool:
    """False on the pb1-detectron2 fallback install (no ``detectron2/_C`` extension)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "FALLBACK_BUILD", False)


def check_compiled_ops(deform_on_per_stage: Sequence[bool]) -> None:
    """Fail at build time, with the reason, when the config needs deformable convolution but
    this Detectron2 has no compiled ops (it would otherwise fail at the first forward)."""
    if any(deform_on_per_stage) and not compiled_ops_available():
        raise RuntimeError(
            f"This config uses deformable convolution ({DEFORM_KEY}={list(deform_on_per_stage)}), "
            "which needs Detectron2's compiled ops, but the installed Detectron2 has none "
            "(pb1-detectron2 fallback). Install official Detectron2 with its C++/CUDA extension "
            "(docs/install.md), or turn deformable convolution off in every stage."
        )


def resnet_stages(
    depth: int,
    *,
    deform_on_per_stage: Sequence[bool] = (False, False, False, False),
    deform_modulated: bool = False,
    deform_num_groups: int = 1,
    **kwargs,
) -> List[List[nn.Module]]:
    """
    The four stages (res2-res5) of a ResNet for Python configs: Detectron2's
    ``ResNet.make_default_stages(depth, **kwargs)``, with ``DeformBottleneckBlock`` in the stages
    of ``deform_on_per_stage``, as ``build_resnet_backbone`` builds ``MODEL.RESNETS`` (same modules,
    same parameter names).
    """
    check_compiled_ops(deform_on_per_stage)
    stages = ResNet.make_default_stages(depth, **kwargs)
    if not any(deform_on_per_stage):
        return stages
    deform_stages = ResNet.make_default_stages(
        depth,
        block_class=DeformBottleneckBlock,
        deform_modulated=deform_modulated,
        deform_num_groups=deform_num_groups,
        **kwargs,
    )
    return [d if on else s for s, d, on in zip(stages, deform_stages, deform_on_per_stage)]


@BACKBONE_REGISTRY.register()
def build_anchor_free_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """
    ResNet (``MODEL.RESNETS``) + FPN (``MODEL.FPN``) with P6 = conv3x3 s2 on
    ``MODEL.FPN.TOP_BLOCK_IN_FEATURE`` ("p5" or "res5") and P7 = conv3x3 s2 on ReLU(P6).
    """
    check_compiled_ops(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE)
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
