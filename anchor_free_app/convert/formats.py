"""The three source layouts and their rules.

* ``mmdet2-pseudo-iou``: the Pseudo-IoU authors' checkpoints (SHI-Labs/
  Pseudo-IoU-for-Anchor-Free-Object-Detection, an mmdetection 2.11 fork): mmdet's ``ResNet``
  (``mmdet/models/backbones/resnet.py``), ``FPN`` (``mmdet/models/necks/fpn.py``, start_level 1,
  two extra convs) and ``PIOUHead`` (``mmdet/models/dense_heads/piou_head.py``, the layers of
  mmdet 2.11's ``FCOSHead``: ``cls_convs``/``reg_convs`` of ``ConvModule`` (conv + gn),
  ``conv_cls``, ``conv_reg``, ``conv_centerness``, ``scales``).
* ``mmdet3-autoassign``: mmdetection 3.x ``AutoAssignHead``
  (``mmdet/models/dense_heads/autoassign_head.py``; the same ResNet and FPN), whose
  ``conv_centerness`` is the implicit objectness and ``center_prior.mean``/``.sigma`` the
  learnable prior.
* ``cvpods-autoassign``: the AutoAssign authors' release (Megvii-BaseDetection/AutoAssign,
  ``auto_assign.res50.fpn.coco.800size.1x/auto_assign.py``: ``AutoAssign`` with ``mu``,
  ``sigma`` and ``AutoAssignHead``: ``cls_subnet``/``bbox_subnet`` Sequentials of
  Conv2d/GroupNorm/ReLU, ``cls_score``, ``bbox_pred``, ``obj_score``, ``scales`` of shape (1,)).
  Its backbone (``cvpods/modeling/backbone/{resnet,fpn}.py``, ``build_retinanet_resnet_fpn_backbone``)
  has Detectron2's module names: ``bottom_up.stem.conv1.norm``, ``res2``-``res5``,
  ``fpn_lateral3``-``5``, ``fpn_output3``-``5``, ``top_block.p6``/``p7``.

mmdetection layer names come from ``mmcv.cnn.ConvModule`` (``conv``, ``gn``/``bn``) and the
ResNet's ``layer{1..4}``/``bn{1..3}``/``downsample``; Detectron2's from
``detectron2/modeling/backbone/{resnet,fpn}.py``; ours from :class:`anchor_free.head.AnchorFreeHead`.
"""
import re
from typing import Callable, Dict, List, Mapping, Optional

from torch import Tensor

from .mapping import Rule

__all__ = ["SOURCES", "detect_source", "rules_for"]

_BN = r"(weight|bias|running_mean|running_var)"


def _scalar(t: Tensor) -> Tensor:
    """cvpods' ``Scale`` holds a (1,) tensor, mmcv's and ours a 0-d one."""
    if t.numel() != 1:
        raise ValueError(f"a Scale parameter must have one element, got shape {tuple(t.shape)}")
    return t.reshape(())


def _tower(step: int, ours: str) -> Callable[["re.Match"], str]:
    """mmdet ConvModule i of a tower -> index of its conv (``step * i``) or GroupNorm
    (``step * i + 1``) in our ``nn.Sequential`` (conv, norm, ReLU per layer)."""

    def place(m: "re.Match") -> str:
        i, part, param = int(m[1]), m[2], m[3]
        return f"head.{ours}.{step * i + (1 if part == 'gn' else 0)}.{param}"

    return place


def _mmdet_resnet_rules() -> List[Rule]:
    """mmdet ``ResNet`` (pytorch or caffe style, BasicBlock or Bottleneck, optional DCN) ->
    Detectron2 ``ResNet`` under ``backbone.bottom_up``."""
    d2 = "backbone.bottom_up"

    def block(m: "re.Match") -> str:
        stage, idx, rest = int(m[1]) + 1, m[2], m[3]
        rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
        rest = re.sub(r"^downsample\.0\.", "shortcut.", rest)
        rest = re.sub(r"^downsample\.1\.", "shortcut.norm.", rest)
        rest = re.sub(r"^conv2\.conv_offset\.", "conv2_offset.", rest)  # DCN offsets + masks
        return f"{d2}.res{stage}.{idx}.{rest}"

    blk = (
        r"(?:conv[123]\.weight|bn[123]\." + _BN + r"|downsample\.0\.weight|downsample\.1\."
        + _BN + r"|conv2\.conv_offset\.(?:weight|bias))"
    )
    return [
        Rule(r".*\.num_batches_tracked", None, why="BatchNorm step counter (FrozenBN has none)"),
        Rule(r"backbone\.conv1\.weight", f"{d2}.stem.conv1.weight"),
        Rule(r"backbone\.bn1\." + _BN, f"{d2}.stem.conv1.norm.\\1"),
        Rule(r"backbone\.layer([1-4])\.(\d+)\.(" + blk + ")", block),
    ]


def _mmdet_fpn_rules() -> List[Rule]:
    """mmdet ``FPN(start_level=1, num_outs=5, add_extra_convs=...)`` on C3-C5: lateral / output
    conv i is level i + 3; extra convs 3 and 4 are P6 and P7 (their input, P5 or C5, is the
    config's ``MODEL.FPN.TOP_BLOCK_IN_FEATURE``, checked through the P6 weight's shape)."""
    names = {0: "fpn_output3", 1: "fpn_output4", 2: "fpn_output5", 3: "top_block.p6", 4: "top_block.p7"}
    return [
        Rule(r"neck\.lateral_convs\.([0-2])\.conv\.(weight|bias)",
             lambda m: f"backbone.fpn_lateral{int(m[1]) + 3}.{m[2]}"),
        Rule(r"neck\.fpn_convs\.([0-4])\.conv\.(weight|bias)",
             lambda m: f"backbone.{names[int(m[1])]}.{m[2]}"),
    ]


def _mmdet_head_rules(step: int) -> List[Rule]:
    """mmdet ``AnchorFreeHead``/``FCOSHead`` layers -> :class:`AnchorFreeHead`."""
    return [
        Rule(r"bbox_head\.cls_convs\.(\d+)\.(conv|gn)\.(weight|bias)", _tower(step, "cls_tower")),
        Rule(r"bbox_head\.reg_convs\.(\d+)\.(conv|gn)\.(weight|bias)", _tower(step, "box_tower")),
        Rule(r"bbox_head\.conv_cls\.(weight|bias)", r"head.cls_score.\1"),
        Rule(r"bbox_head\.conv_reg\.(weight|bias)", r"head.bbox_pred.\1"),
        Rule(r"bbox_head\.conv_centerness\.(weight|bias)", r"head.quality.\1"),
        Rule(r"bbox_head\.scales\.(\d+)\.scale", r"head.scales.\1.scale", _scalar),
    ]


def _cvpods_rules() -> List[Rule]:
    """cvpods AutoAssign -> ours: the towers are the same Sequentials (Conv2d, GroupNorm, ReLU
    per layer), so indices carry over."""
    bn = r"(?:weight|bias|running_mean|running_var)"
    return [
        Rule(r"backbone\.bottom_up\.stem\.conv1\.(weight|norm\." + bn + ")", r"\g<0>"),
        Rule(
            r"backbone\.bottom_up\.res[2-5]\.\d+\.(?:conv[123]|shortcut)\.(?:weight|norm\."
            + bn + ")",
            r"\g<0>",
        ),
        Rule(r"backbone\.bottom_up\.res[2-5]\.\d+\.conv2_offset\.(?:weight|bias)", r"\g<0>"),
        Rule(r"backbone\.(?:fpn_lateral[3-5]|fpn_output[3-5]|top_block\.p[67])\.(?:weight|bias)",
             r"\g<0>"),
        Rule(r"head\.cls_subnet\.(\d+)\.(weight|bias)", r"head.cls_tower.\1.\2"),
        Rule(r"head\.bbox_subnet\.(\d+)\.(weight|bias)", r"head.box_tower.\1.\2"),
        Rule(r"head\.(cls_score|bbox_pred)\.(weight|bias)", r"head.\1.\2"),
        Rule(r"head\.obj_score\.(weight|bias)", r"head.quality.\1"),
        Rule(r"head\.scales\.(\d+)\.scale", r"head.scales.\1.scale", _scalar),
        Rule(r"mu", "center_prior.mu"),
        Rule(r"sigma", "center_prior.sigma"),
    ]


def _has_norm(keys) -> bool:
    return any(".gn." in k for k in keys)


def _mmdet2_pseudo_iou(keys) -> List[Rule]:
    step = 3 if _has_norm(keys) else 2
    return _mmdet_resnet_rules() + _mmdet_fpn_rules() + _mmdet_head_rules(step)


def _mmdet3_autoassign(keys) -> List[Rule]:
    step = 3 if _has_norm(keys) else 2
    return (
        _mmdet_resnet_rules()
        + _mmdet_fpn_rules()
        + _mmdet_head_rules(step)
        + [
            Rule(r"bbox_head\.center_prior\.mean", "center_prior.mu"),
            Rule(r"bbox_head\.center_prior\.sigma", "center_prior.sigma"),
        ]
    )


def _cvpods_autoassign(keys) -> List[Rule]:
    del keys
    return _cvpods_rules()


#: source name -> (rule builder from the source keys, meta-architecture it converts to, what it is)
SOURCES: Dict[str, tuple] = {
    "mmdet2-pseudo-iou": (
        _mmdet2_pseudo_iou,
        "PseudoIoU",
        "Pseudo-IoU authors' checkpoint (mmdetection 2.11 PIOUHead)",
    ),
    "mmdet3-autoassign": (
        _mmdet3_autoassign,
        "AutoAssign",
        "mmdetection 3.x AutoAssign (model zoo autoassign_r50-caffe_fpn_1x_coco)",
    ),
    "cvpods-autoassign": (
        _cvpods_autoassign,
        "AutoAssign",
        "AutoAssign authors' cvpods checkpoint",
    ),
}


def rules_for(source: str, keys) -> List[Rule]:
    if source not in SOURCES:
        raise ValueError(f"Unknown source format {source!r}: one of {sorted(SOURCES)}")
    return SOURCES[source][0](list(keys))


def detect_source(state_dict: Mapping[str, Tensor]) -> Optional[str]:
    """Guess the source layout from marker keys; None if none fits."""
    keys = set(state_dict)
    if "bbox_head.center_prior.mean" in keys:
        return "mmdet3-autoassign"
    if "bbox_head.conv_centerness.weight" in keys:
        return "mmdet2-pseudo-iou"
    if "head.obj_score.weight" in keys and "mu" in keys:
        return "cvpods-autoassign"
    return None
