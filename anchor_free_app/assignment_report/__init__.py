"""The assignment report (``tools/assignment_report.py``): how a config's label assignment treats
the objects of a dataset, before any training: positives per object by size and FPN level,
objects left without positives and why, points inside several boxes, AutoAssign's in-box
locations and the center prior's effective number of locations; from the annotations and image
sizes alone (no pixels read, no model forward), with the training code's own assignment.

Modules: :mod:`.settings` (what is read from the config, the rules compared), :mod:`.objects`
(the dataset mapper's box handling, vectorised), :mod:`.compute` (batched assignment and
per-object counts), :mod:`.summary` (statistics and facts), :mod:`.report` (markdown, JSON, CSV,
plots).
"""
from typing import Dict, List, Optional, Sequence, Tuple

from .compute import DEFAULT_BATCH_POINTS, RuleCounts, ScaleResult, assign_objects
from .objects import collect_annotations, mapper_instances, resize_objects
from .report import load_records, make_report, markdown, write_report
from .settings import (
    PRIOR_CHOICES,
    PSEUDO_IOU_RULES,
    ReportSettings,
    Rule,
    build_rules,
    check_unit_interval,
    read_settings,
    train_scales,
)

__all__ = [
    "DEFAULT_BATCH_POINTS",
    "PRIOR_CHOICES",
    "PSEUDO_IOU_RULES",
    "ReportSettings",
    "Rule",
    "RuleCounts",
    "ScaleResult",
    "assign_objects",
    "build_rules",
    "check_unit_interval",
    "collect_annotations",
    "load_records",
    "make_report",
    "mapper_instances",
    "markdown",
    "read_settings",
    "resize_objects",
    "run_report",
    "train_scales",
    "write_report",
]


def run_report(
    config_file: str,
    opts: Sequence[str] = (),
    *,
    datasets: Sequence[str] = (),
    scales: Sequence[int] = (),
    thresholds: Sequence[float] = (),
    rules: Sequence[str] = (),
    priors: Sequence[str] = (),
    output_dir: Optional[str] = None,
    num_examples: int = 10,
    max_images: int = 0,
    workers: int = 1,
    progress: bool = False,
) -> Tuple[Dict, List[str]]:
    """
    The whole report, as ``tools/assignment_report.py`` runs it: read the config, load the
    datasets (default: the config's ``DATASETS.TRAIN``), assign at each scale (default: the
    smallest and largest training short side) with the config's rule and the alternatives, write
    the files to ``output_dir`` (default ``OUTPUT_DIR/assignment_report``).

    Returns:
        the report dict (see :func:`make_report`) and the paths written.
    """
    settings = read_settings(config_file, opts)
    rule_list = build_rules(settings, thresholds=thresholds, rules=rules, priors=priors)
    names = list(datasets) or list(settings.dataset_names)
    records = load_records(names, settings.filter_empty)
    if max_images:
        records = records[:max_images]
    report = make_report(
        settings,
        records,
        train_scales(settings, scales),
        rule_list,
        dataset_names=names,
        num_examples=num_examples,
        workers=workers,
        progress=progress,
    )
    output_dir = output_dir or f"{settings.output_dir}/assignment_report"
    return report, write_report(report, output_dir)
