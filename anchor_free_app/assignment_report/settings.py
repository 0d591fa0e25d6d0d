"""What the assignment report reads from a config, in one place (:func:`read_settings`), and the
rules it compares (:func:`build_rules`).

The report runs the training code itself: the model built from the config (on the CPU, never run
forward) gives the point generator, the strides, the padding of the input
(``backbone.size_divisibility``), Pseudo-IoU's :class:`~pseudo_iou.assignment.PointAssigner` and
AutoAssign's :class:`~autoassign.center_prior.CenterPrior`.
"""
import copy
import dataclasses
import logging
import os
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "META_ARCHITECTURES",
    "PSEUDO_IOU_RULES",
    "PRIOR_CHOICES",
    "ReportSettings",
    "Rule",
    "build_rules",
    "load_prior_weights",
    "read_settings",
    "train_scales",
]

logger = logging.getLogger(__name__)

META_ARCHITECTURES = ("PseudoIoU", "AutoAssign")
# The paper's Table 2 alternatives (Pseudo-IoU Sec. 4.2), by their --rules name.
PSEUDO_IOU_RULES = {
    "af_baseline": "all_in_box",
    "centerness": "centerness",
    "scaled_box": "scaled_box",
}
PRIOR_CHOICES = ("init", "weights")


@dataclasses.dataclass
class ReportSettings:
    """
    Everything the report takes from a config.

    Attributes:
        config_file: the config's path (named in the report).
        meta_architecture: "PseudoIoU" or "AutoAssign".
        model: the detector built on the CPU (eval mode; its weights are not loaded).
        min_sizes: ``INPUT.MIN_SIZE_TRAIN``, the short-side lengths of the training resize.
        max_size: ``INPUT.MAX_SIZE_TRAIN``.
        sampling: ``INPUT.MIN_SIZE_TRAIN_SAMPLING`` ("choice" or "range").
        dataset_names: ``DATASETS.TRAIN``.
        filter_empty: ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` (records without a non-crowd box
            are left out of training).
        num_classes: K of the detector.
        weights: ``MODEL.WEIGHTS`` ("" for none).
        output_dir: ``OUTPUT_DIR``.
        notes: settings of the training input the report does not follow (random crop).
    """

    config_file: str
    meta_architecture: str
    model: nn.Module
    min_sizes: Tuple[int, ...]
    max_size: int
    sampling: str
    dataset_names: Tuple[str, ...]
    filter_empty: bool
    num_classes: int
    weights: str
    output_dir: str
    notes: Tuple[str, ...] = ()


def read_settings(config_file: str, opts: Sequence[str] = ()) -> ReportSettings:
    """
    Read a config, yacs (``.yaml``, ``KEY VALUE`` overrides) or Python (``.py``,
    ``path.key=value``), and build its model on the CPU.

    Deformable convolutions are switched off for the build (the backbone's convolutions do not
    change the points or the assignment, and the v0.6 fallback has no compiled ops); nothing
    else differs from training's model.
    """
    from anchor_free_app.config import (
        build_model_from_config,
        load_config,
        run_settings,
        set_device,
    )

    cfg = load_config(config_file, opts, freeze=False, check_device=False)
    run = run_settings(cfg)
    arch = run.meta_architecture
    if arch not in META_ARCHITECTURES:
        key = "MODEL.META_ARCHITECTURE" if run.config_system == "yacs" else "model._target_"
        raise ValueError(
            f"{config_file}: {key} is {arch!r}; the assignment report covers "
            f"{list(META_ARCHITECTURES)}"
        )
    set_device(cfg, "cpu")
    if run.config_system == "yacs":
        cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False] * 4
        sampling = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        filter_empty = bool(cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        crops = [cfg.INPUT.CROP.TYPE] if cfg.INPUT.CROP.ENABLED else []
    else:
        stages = cfg.model.backbone.get("bottom_up", {}).get("stages", {})
        if "deform_on_per_stage" in stages:
            stages.deform_on_per_stage = [False] * 4
        resize = cfg.dataloader.train.mapper.augmentations[0]
        sampling = resize.get("sample_style", "range")
        filter_empty = bool(cfg.dataloader.train.dataset.get("filter_empty", True))
        crops = [
            str(aug._target_) for aug in cfg.dataloader.train.mapper.augmentations
            if "Crop" in str(aug.get("_target_", ""))
        ]  # fmt: skip
    model = build_model_from_config(cfg).eval()
    notes = [
        f"training crops the images at random ({crop}); the report assigns on the whole "
        "resized images"
        for crop in crops
    ]
    return ReportSettings(
        config_file=config_file,
        meta_architecture=arch,
        model=model,
        min_sizes=run.train_min_sizes,
        max_size=run.train_max_size,
        sampling=sampling,
        dataset_names=run.train_datasets,
        filter_empty=filter_empty,
        num_classes=int(run.num_classes),
        weights=run.weights,
        output_dir=run.output_dir,
        notes=tuple(notes),
    )


def train_scales(settings: ReportSettings, scales: Optional[Sequence[int]] = None) -> List[int]:
    """
    The short-side lengths to report: ``scales`` if given, else the smallest and the largest of
    the training resize (``MIN_SIZE_TRAIN``: its values with "choice" sampling, its two ends with
    "range"); one when they are equal.
    """
    if scales:
        bad = [s for s in scales if int(s) < 1]
        if bad:
            raise ValueError(f"--scales: short-side lengths must be >= 1 pixel, got {bad}")
        return sorted({int(s) for s in scales})
    sizes = settings.min_sizes
    return sorted({min(sizes), max(sizes)})


@dataclasses.dataclass
class Rule:
    """
    One assignment the report measures.

    Attributes:
        name: its label in tables and plots.
        assigner: a Pseudo-IoU ``PointAssigner`` (counts: positive points per object), or None.
        center_prior: an AutoAssign ``CenterPrior`` (effective number of in-box locations per
            object under its weights), or None.
        is_config: the config's own rule.
    """

    name: str
    assigner: Optional[object] = None
    center_prior: Optional[nn.Module] = None
    is_config: bool = False


def _describe_assigner(assigner) -> str:
    op = ">=" if assigner.thresh_inclusive else ">"
    if assigner.assigner == "pseudo_iou":
        return f"Pseudo-IoU {op} {assigner.pseudo_iou_thresh:g}"
    if assigner.assigner == "centerness":
        return f"centerness {op} {assigner.centerness_thresh:g}"
    if assigner.assigner == "scaled_box":
        return f"scaled box {assigner.scaled_box_factor:g}"
    return "AF-baseline (all in box)"


def check_unit_interval(values: Sequence[float], argument: str) -> List[float]:
    """``values`` as floats, each in [0, 1], else a ValueError naming ``argument``."""
    out = []
    for value in values:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{argument}: {value:g} is outside [0, 1]")
        out.append(value)
    return out


def build_rules(
    settings: ReportSettings,
    thresholds: Sequence[float] = (),
    rules: Sequence[str] = (),
    priors: Sequence[str] = (),
) -> List[Rule]:
    """
    The config's rule first, then the alternatives asked for.

    Args:
        thresholds: Pseudo-IoU thresholds T (``--thresholds``), the config's comparison (``>``
            or ``>=``, ``MODEL.PSEUDO_IOU.THRESH_INCLUSIVE``), each in [0, 1].
        rules: names of :data:`PSEUDO_IOU_RULES` (``--rules``): the paper's Table 2 rules with the
            config's ``CENTERNESS_THRESH`` and ``SCALED_BOX_FACTOR``.
        priors: AutoAssign (``--prior``): "init" (the prior as built from MU_INIT / SIGMA_INIT)
            and / or "weights" (the trained prior of ``MODEL.WEIGHTS``).
    Returns:
        the rules, without duplicates; for AutoAssign, the in-box locations need no rule and
        each entry is a prior.
    """
    arch = settings.meta_architecture
    model = settings.model
    if arch != "PseudoIoU" and (thresholds or rules):
        argument = "--thresholds" if thresholds else "--rules"
        raise ValueError(
            f"{argument} applies to Pseudo-IoU configs; {settings.config_file} is a "
            f"{arch} config (MODEL.META_ARCHITECTURE)"
        )
    if arch != "AutoAssign" and priors:
        raise ValueError(
            f"--prior applies to AutoAssign configs; {settings.config_file} is a {arch} config "
            "(MODEL.META_ARCHITECTURE)"
        )
    if arch == "AutoAssign":
        unknown = [p for p in priors if p not in PRIOR_CHOICES]
        if unknown:
            raise ValueError(f"--prior: {unknown} not in {list(PRIOR_CHOICES)}")
        out = []
        for prior in list(priors) or ["init"]:
            if prior == "init":
                module = copy.deepcopy(model.center_prior)
                name = f"prior at init ({_describe_prior(module)})"
            else:
                module = load_prior_weights(settings)
                name = f"trained prior ({os.path.basename(settings.weights)})"
            if all(r.name != name for r in out):
                out.append(Rule(name, center_prior=module, is_config=prior == "init"))
        return out

    unknown = [r for r in rules if r not in PSEUDO_IOU_RULES]
    if unknown:
        raise ValueError(f"--rules: {unknown} not in {list(PSEUDO_IOU_RULES)}")
    base = model.assigner
    assigners = [base]
    assigners += [
        dataclasses.replace(base, assigner="pseudo_iou", pseudo_iou_thresh=t)
        for t in check_unit_interval(thresholds, "--thresholds")
    ]
    assigners += [dataclasses.replace(base, assigner=PSEUDO_IOU_RULES[r]) for r in rules]
    out = []
    for i, assigner in enumerate(assigners):
        name = _describe_assigner(assigner) + (" [config]" if i == 0 else "")
        if all(r.assigner != assigner for r in out):
            out.append(Rule(name, assigner=assigner, is_config=i == 0))
    return out


def _describe_prior(prior: nn.Module) -> str:
    if prior.mu is None:
        return "none: G = 1"
    mu, sigma = prior.mu.detach(), prior.sigma.detach()
    if torch.all(mu == mu.flatten()[0]) and torch.all(sigma == sigma.flatten()[0]):
        return f"mu {float(mu.flatten()[0]):g}, sigma {float(sigma.flatten()[0]):g}"
    return f"{prior.mode}"


def load_prior_weights(settings: ReportSettings) -> nn.Module:
    """
    AutoAssign's center prior with the values of ``MODEL.WEIGHTS`` (Detectron2's
    ``DetectionCheckpointer``); a ValueError if the file has no trained prior (e.g. the
    ImageNet backbone weights of the COCO configs).
    """
    from detectron2.checkpoint import DetectionCheckpointer

    if not settings.weights:
        raise ValueError("--prior weights needs MODEL.WEIGHTS (a trained AutoAssign checkpoint)")
    model = copy.deepcopy(settings.model)
    init = copy.deepcopy(model.center_prior.state_dict())
    DetectionCheckpointer(model).load(settings.weights)
    state = model.center_prior.state_dict()
    if not state or all(torch.equal(state[k], init[k]) for k in init):
        raise ValueError(
            f"--prior weights: MODEL.WEIGHTS={settings.weights} holds no trained center prior "
            "(center_prior.mu / sigma absent or equal to their initial values); pass a trained "
            "AutoAssign checkpoint"
        )
    return model.center_prior
