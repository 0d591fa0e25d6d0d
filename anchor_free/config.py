"""Config keys shared by both detectors (added by ``add_pseudo_iou_config`` and
``add_autoassign_config``), and the value checks of both config systems.

Every setting is checked once, by the constructor that receives it (the detectors,
:class:`~anchor_free.head.AnchorFreeHead`, ``PointAssigner``, ``CenterPrior``), so a yacs config
(``from_config``) and a Python config (``instantiate(cfg.model)``) get the same check and the same
message. A message names the yacs key and the Python-config attribute:
``MODEL.AUTOASSIGN.TAU (Python config: model.tau) must be > 0, got 0.0``.
"""
from typing import Any, Iterable, NamedTuple

from detectron2.config import CfgNode as CN

__all__ = [
    "ConfigKey",
    "add_anchor_free_config",
    "check_choice",
    "check_interval",
    "check_min",
]


def add_anchor_free_config(cfg: CN) -> None:
    """Add the keys both detectors share to ``cfg`` in place. Safe to call twice."""
    # Input of the P6/P7 top block of "build_anchor_free_resnet_fpn_backbone": "p5" (FCOS and
    # Pseudo-IoU release, mmdet extra_convs_on_inputs=False) or "res5" (RetinaNet and AutoAssign
    # release, P6 = conv on C5).
    if "TOP_BLOCK_IN_FEATURE" not in cfg.MODEL.FPN:
        cfg.MODEL.FPN.TOP_BLOCK_IN_FEATURE = "p5"


class ConfigKey(NamedTuple):
    """One setting as both config systems spell it: ``MODEL.PSEUDO_IOU.NUM_CLASSES`` (yacs) and
    ``model.num_classes`` (Python config)."""

    yacs: str
    python: str

    def __str__(self) -> str:
        return f"{self.yacs} (Python config: {self.python})"


def check_choice(key: ConfigKey, value: Any, choices: Iterable) -> None:
    """Raise a ValueError naming ``key`` and ``value`` unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{key} must be one of {choices}, got {value!r}")


def check_min(key: ConfigKey, value: float, low: float, *, strict: bool = False) -> None:
    """``value > low`` (``strict``) or ``value >= low``, else a ValueError naming ``key``."""
    ok = value > low if strict else value >= low
    if not ok:
        raise ValueError(f"{key} must be {'>' if strict else '>='} {low:g}, got {value!r}")


def check_interval(
    key: ConfigKey, value: float, low: float, high: float, *, closed: str = "both"
) -> None:
    """``value`` in the interval from ``low`` to ``high``; ``closed``: "both", "left", "right" or
    "neither" (which ends belong to it), else a ValueError naming ``key``."""
    left = closed in ("both", "left")
    right = closed in ("both", "right")
    ok = (low <= value if left else low < value) and (value <= high if right else value < high)
    if not ok:
        interval = f"{'[' if left else '('}{low:g}, {high:g}{']' if right else ')'}"
        raise ValueError(f"{key} must be in {interval}, got {value!r}")
