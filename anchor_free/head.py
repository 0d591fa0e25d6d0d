"""The dense head both detectors share: two conv towers, a classifier, an ltrb regressor with a
learnable scale per level, and a one-channel quality branch (Pseudo-IoU's centerness, AutoAssign's
implicit objectness).

Detectron2's ``RetinaNetHead``/``FCOSHead`` are not used: on v0.6 ``RetinaNetHead.__init__``
(``detectron2/modeling/meta_arch/retinanet.py``) probes the norm with ``get_norm(norm, 1)``, i.e.
``nn.GroupNorm(32, 1)``, which current torch rejects (fixed on Detectron2 main, PR #4470).

Mixed precision: under autocast the towers, the classifier and the quality branch run in the
autocast dtype, but the box output is cast to float32 before its Scale and ReLU, as mmdet's
``FCOSHead.forward_single`` (``scale(bbox_pred).float()``, "float to avoid overflow when
enabling FP16"; the Pseudo-IoU release's head) and mmdet's ``AutoAssignHead.forward_single`` do
(the AutoAssign release, cvpods, trains in float32 only).
"""
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.layers import ShapeSpec, get_norm

from .config import ConfigKey, check_interval, check_min

__all__ = ["Scale", "AnchorFreeHead"]


def _key(name: str, python: str) -> ConfigKey:
    return ConfigKey(f"MODEL.PSEUDO_IOU.{name} / MODEL.AUTOASSIGN.{name}", f"model.head.{python}")


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level on the regression output)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _conv_tower(channels: int, num_convs: int, norm: str, conv_bias: bool) -> nn.Sequential:
    layers: List[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, 3, padding=1, bias=conv_bias))
        if norm:
            layers.append(get_norm(norm, channels))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class AnchorFreeHead(nn.Module):
    """
    Shared across FPN levels::

        cls tower -> cls_score (K)
        box tower -> bbox_pred (4, ltrb) -> Scale_l -> ReLU
                  -> quality (1): on the box tower, or on the cls tower if ``quality_on_box_tower``
                     is False; absent if ``use_quality`` is False

    All convs are initialised N(0, 0.01) with zero bias; the classifier bias is set so that the
    initial foreground probability is ``prior_prob``; the regressor bias is ``bbox_bias_init``.
    """

    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_convs: int = 4,
        norm: str = "GN",
        conv_bias: bool = False,
        prior_prob: float = 0.01,
        bbox_bias_init: float = 0.0,
        use_quality: bool = True,
        quality_on_box_tower: bool = True,
    ):
        """
        Args:
            input_shape: one ShapeSpec per FPN level; all must have the same channel count.
            num_classes: K, the number of foreground classes (sigmoid classifier, no background).
            num_convs: convs per tower (0 allowed: the predictors then act on the FPN features).
            norm: a Detectron2 norm name ("GN", "BN", ...) or "" for none, after each tower conv.
            conv_bias: whether the tower convs have a bias (Pseudo-IoU/mmdet: no; AutoAssign: yes).
            prior_prob: initial sigmoid probability of the classifier.
            bbox_bias_init: initial bias of the ltrb regressor (AutoAssign release: 4.0).
            use_quality: build the one-channel quality branch.
            quality_on_box_tower: put it on the box tower (both releases) or on the cls tower.
        """
        super().__init__()
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(f"All FPN levels must have the same channels, got {sorted(channels)}")
        # One head class for both detectors: the key names both yacs nodes.
        check_min(_key("NUM_CONVS", "num_convs"), num_convs, 0)
        check_interval(_key("PRIOR_PROB", "prior_prob"), prior_prob, 0, 1, closed="neither")
        in_channels = channels.pop()
        self.num_classes = num_classes
        self.quality_on_box_tower = quality_on_box_tower
        self.cls_tower = _conv_tower(in_channels, num_convs, norm, conv_bias)
        self.box_tower = _conv_tower(in_channels, num_convs, norm, conv_bias)
        self.cls_score = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.quality = nn.Conv2d(in_channels, 1, 3, padding=1) if use_quality else None
        self.scales = nn.ModuleList([Scale(1.0) for _ in input_shape])

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0.0)
            elif isinstance(module, nn.GroupNorm):
                nn.init.constant_(module.weight, 1.0)
                nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.constant_(self.bbox_pred.bias, bbox_bias_init)

    def forward(
        self, features: List[Tensor]
    ) -> Tuple[List[Tensor], List[Tensor], Optional[List[Tensor]]]:
        """
        Args:
            features: per-level FPN features, each (N, C, Hi, Wi).
        Returns:
            cls_logits: per level (N, K, Hi, Wi).
            box_ltrb: per level (N, 4, Hi, Wi) float32 (also under autocast), non-negative
                distances in the unit of the training targets (callers multiply by the stride
                where they work in pixels).
            quality_logits: per level (N, 1, Hi, Wi), or None without the quality branch.
        """
        if len(features) != len(self.scales):
            raise ValueError(f"Head built for {len(self.scales)} levels, got {len(features)}")
        cls_logits, box_ltrb, quality_logits = [], [], []
        # enumerate over the ModuleList, not zip: TorchScript needs a static length.
        for level, scale in enumerate(self.scales):
            feature = features[level]
            cls_feature = self.cls_tower(feature)
            box_feature = self.box_tower(feature)
            cls_logits.append(self.cls_score(cls_feature))
            # float32 before Scale (mixed precision, see the module docstring); not in place: an
            # in-place op after ReLU breaks autograd (mmdet PR #7074).
            box_ltrb.append(F.relu(scale(self.bbox_pred(box_feature).float())))
            if self.quality is not None:
                branch_input = box_feature if self.quality_on_box_tower else cls_feature
                quality_logits.append(self.quality(branch_input))
        return cls_logits, box_ltrb, (quality_logits if self.quality is not None else None)
