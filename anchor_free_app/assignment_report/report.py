"""The report: run every scale and rule on a dataset's records (:func:`make_report`), then write
it as markdown, JSON, CSV and PNG plots (:func:`write_report`)."""
import csv
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from .compute import DEFAULT_BATCH_POINTS, ScaleResult, assign_objects
from .objects import AnnotationTable, collect_annotations, resize_objects
from .settings import ReportSettings, Rule
from .summary import SIZE_BUCKETS, facts, quantities, scale_summary, zero_fraction_by_bin

__all__ = ["load_records", "make_report", "markdown", "write_report"]

logger = logging.getLogger(__name__)


def load_records(dataset_names: Sequence[str], filter_empty: bool) -> List[Dict]:
    """
    The training records of ``dataset_names`` as Detectron2's training loader gets them
    (``get_detection_dataset_dicts``, images without non-crowd boxes left out when
    ``filter_empty``, ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``). An unregistered name is a
    ValueError naming ``--dataset``.
    """
    from detectron2.data import DatasetCatalog, get_detection_dataset_dicts

    registered = set(DatasetCatalog.list())
    missing = [n for n in dataset_names if n not in registered]
    if missing:
        raise ValueError(
            f"--dataset: {missing} not registered with Detectron2 (DatasetCatalog); register it "
            "first (e.g. detectron2.data.datasets.register_coco_instances) or pass one of "
            f"{sorted(registered)[:20]}{' ...' if len(registered) > 20 else ''}"
        )
    return get_detection_dataset_dicts(list(dataset_names), filter_empty=filter_empty)


def make_report(
    settings: ReportSettings,
    records: Sequence[Dict],
    scales: Sequence[int],
    rules: Sequence[Rule],
    *,
    dataset_names: Sequence[str] = (),
    num_examples: int = 10,
    max_points: int = DEFAULT_BATCH_POINTS,
    workers: int = 1,
    progress: bool = False,
) -> Dict:
    """
    Assign every scale and rule on ``records`` and summarise (``max_points``, ``workers``,
    ``progress``: see :func:`~.compute.assign_objects`).

    Returns:
        the report as a JSON-ready dict ("summaries" per scale, "facts", settings), with the
        per-object results under the key "_results" (list of :class:`ScaleResult`, not
        serialised) for the plots and CSV.
    """
    start = time.perf_counter()
    table: AnnotationTable = collect_annotations(records)
    results: List[ScaleResult] = []
    for scale in scales:
        objects = resize_objects(table, scale, settings.max_size)
        logger.info(
            f"Assigning {len(objects)} objects of {table.num_images} images at short side "
            f"{scale} with {len(rules)} rule(s)"
        )
        results.append(
            assign_objects(
                settings.model, objects, rules, table.image_ids, settings.num_classes,
                max_points=max_points, workers=workers, progress=progress,
            )
        )  # fmt: skip
    summaries = [scale_summary(r, table.image_ids, num_examples) for r in results]
    return {
        "config_file": settings.config_file,
        "meta_architecture": settings.meta_architecture,
        "datasets": list(dataset_names),
        "records": table.num_images,
        "crowd_annotations_ignored": table.num_crowd,
        "annotations": int(len(table.image_index)),
        "train_min_sizes": list(settings.min_sizes),
        "train_sampling": settings.sampling,
        "max_size": settings.max_size,
        "scales": [int(s) for s in scales],
        "notes": list(settings.notes),
        "summaries": summaries,
        "facts": facts(summaries),
        "seconds": round(time.perf_counter() - start, 2),
        "_results": results,
        "_image_ids": table.image_ids,
    }


def _fmt(value: float) -> str:
    return f"{value:.2f}" if abs(value - round(value)) > 1e-9 else f"{int(round(value))}"


def markdown(report: Dict) -> str:
    """The report's tables and facts as markdown."""
    lines = [
        "# Assignment report",
        "",
        f"Config `{report['config_file']}` ({report['meta_architecture']}), dataset(s) "
        f"{', '.join(f'`{d}`' for d in report['datasets']) or '(records)'}: "
        f"{report['records']} images, {report['annotations']} boxes "
        f"({report['crowd_annotations_ignored']} crowd boxes ignored). Training resize: short "
        f"side {report['train_min_sizes']} ({report['train_sampling']}), long side <= "
        f"{report['max_size']}; reported at short side "
        f"{', '.join(str(s) for s in report['scales'])}, unflipped. Object size: sqrt of the box "
        "area in the original image (COCO's small < 32 <= medium < 96 <= large).",
    ]
    lines += [f"Note: {n}." for n in report["notes"]]
    for s in report["summaries"]:
        lines += _scale_markdown(s)
    lines += ["", "## Facts", ""] + [f"- {f}" for f in report["facts"]]
    return "\n".join(lines) + "\n"


def _scale_markdown(s: Dict) -> List[str]:
    sizes = ", ".join(f"{x['height']}x{x['width']} ({x['images']})" for x in s["input_sizes"])
    lines = [
        "",
        f"## Short side {s['scale']}",
        "",
        f"{s['objects']} objects in {s['images']} images ({s['dropped_empty_boxes']} boxes "
        f"empty after clipping, dropped as in training); input sizes (images): {sizes}"
        f"{' ...' if s['distinct_input_sizes'] > len(s['input_sizes']) else ''}.",
        "",
        "| rule | per object | mean | p10 | median | p90 | max | objects with 0 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in s["rows"]:
        a = row["by_size"]["all"]
        if not a.get("objects"):
            continue
        lines.append(
            f"| {row['rule']} | {row['quantity']} | {a['mean']:.2f} | {_fmt(a['p10'])} | "
            f"{_fmt(a['p50'])} | {_fmt(a['p90'])} | {_fmt(a['max'])} | {a['zero']} "
            f"({a['zero_pct']:.1f} %) |"
        )
    buckets = [b for b, _, _ in SIZE_BUCKETS]
    counts = {b: s["rows"][0]["by_size"][b].get("objects", 0) for b in buckets} if s["rows"] else {}
    lines += [
        "",
        "By object size: mean per object / objects with 0.",
        "",
        "| rule | " + " | ".join(f"{b} ({counts.get(b, 0)})" for b in buckets) + " |",
        "|---|" + "---|" * len(buckets),
    ]
    for row in s["rows"]:
        cells = []
        for b in buckets:
            st = row["by_size"][b]
            cells.append(f"{st['mean']:.2f} / {st['zero_pct']:.1f} %" if st.get("objects") else "-")
        lines.append(f"| {row['rule']} ({row['quantity']}) | " + " | ".join(cells) + " |")
    level_rows = [r for r in s["rows"] if "by_level" in r]
    if level_rows:
        lines += [
            "",
            "By FPN level: share of the " + level_rows[0]["quantity"] + ".",
            "",
            "| rule | " + " | ".join(s["levels"]) + " |",
            "|---|" + "---|" * len(s["levels"]),
        ]
        for row in level_rows:
            cells = [f"{row['by_level'][n]['share_pct']:.1f} %" for n in s["levels"]]
            lines.append(f"| {row['rule']} | " + " | ".join(cells) + " |")
    why_rows = [r for r in s["rows"] if "why_without" in r]
    if why_rows:
        lines += [
            "",
            "Objects without a positive, by the step that leaves them none (all sizes / below "
            "16 px): no candidate point (no point of a level whose size range fits the object "
            "inside its box), every candidate point given to another box by the tie-break, "
            "every won point rejected by the rule.",
            "",
            "| rule | without a positive | no candidate point | all to other boxes | "
            "rule rejects all |",
            "|---|---|---|---|---|",
        ]
        for row in why_rows:
            a, t = row["why_without"]["all"], row["why_without"]["< 16 px"]
            keys = ["without_positive", "no_candidate_point", "all_candidates_to_other_boxes",
                    "rule_rejects_all"]  # fmt: skip
            lines.append(
                f"| {row['rule']} | " + " | ".join(f"{a[k]} / {t[k]}" for k in keys) + " |"
            )
        several = s["points_in_several_boxes"]
        lines += [
            "",
            f"Points with a candidate box: {s['points_in_boxes']}; with several: {several} "
            f"({100.0 * several / max(s['points_in_boxes'], 1):.2f} %). How each rule resolved "
            "those with several (the tie-break chooses one box, the rule keeps or rejects the "
            "point for it):",
            "",
            "| rule | positive for the chosen box | background, another box passes the rule | "
            "background, no box passes |",
            "|---|---|---|---|",
        ]
        for row in why_rows:
            o = row["overlaps"]
            lines.append(
                f"| {row['rule']} | {o['positive']} | {o['lost_to_tie_break']} | "
                f"{o['no_box_passes']} |"
            )
    elif s["points_in_boxes"]:
        lines += [
            "",
            f"Locations inside a box: {s['points_in_boxes']}; inside several: "
            f"{s['points_in_several_boxes']} (each in the positive bag of every box it is in).",
        ]
    examples = [r for r in s["rows"] if r["examples"]]
    if examples:
        lines += [
            "",
            "Examples of objects with 0 (image id, annotation index, box in input pixels, size "
            "in original pixels):",
            "",
        ]
        for row in examples:
            shown = "; ".join(
                f"{e['image_id']} #{e['annotation_index']} {e['box_input_xyxy']} {e['size_px']} px"
                for e in row["examples"][:5]
            )
            lines.append(f"- {row['rule']}: {shown}")
    return lines


def write_report(report: Dict, output_dir: str) -> List[str]:
    """
    Write ``report.md``, ``report.json``, ``summary.csv`` (per scale, rule and size bucket),
    ``levels.csv``, ``objects_with_zero.csv`` (every object a rule leaves at 0) and the plots
    ``per_object_by_size.png`` and ``zero_by_size.png``. Returns the paths written.
    """
    os.makedirs(output_dir, exist_ok=True)
    paths = []

    def path(name: str) -> str:
        paths.append(os.path.join(output_dir, name))
        return paths[-1]

    with open(path("report.md"), "w") as f:
        f.write(markdown(report))
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    with open(path("report.json"), "w") as f:
        json.dump(public, f, indent=1, default=_json_default)
    _write_csvs(report, path)
    _plot(report, path("per_object_by_size.png"), zero=False)
    _plot(report, path("zero_by_size.png"), zero=True)
    return paths


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _write_csvs(report: Dict, path) -> None:
    stats = ["objects", "mean", "p10", "p50", "p90", "max", "zero", "zero_pct"]
    with open(path("summary.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scale", "rule", "quantity", "bucket"] + stats)
        for s in report["summaries"]:
            for row in s["rows"]:
                for bucket, st in row["by_size"].items():
                    w.writerow(
                        [s["scale"], row["rule"], row["quantity"], bucket]
                        + [_csv_number(st.get(k)) for k in stats]
                    )
    with open(path("levels.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scale", "rule", "quantity", "level", "count", "share_pct"])
        for s in report["summaries"]:
            for row in s["rows"]:
                for level, st in row.get("by_level", {}).items():
                    w.writerow([s["scale"], row["rule"], row["quantity"], level, st["count"],
                                f"{st['share_pct']:.3f}"])  # fmt: skip
    image_ids = report["_image_ids"]
    with open(path("objects_with_zero.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scale", "rule", "quantity", "image_id", "annotation_index", "x0", "y0",
                    "x1", "y1", "size_px"])  # fmt: skip
        for result in report["_results"]:
            objects = result.objects
            for q in quantities(result):
                for i in np.nonzero(q.values == 0)[0]:
                    w.writerow(
                        [objects.scale, q.rule, q.label, image_ids[objects.image_index[i]],
                         int(objects.ann_index[i])]
                        + [f"{v:.2f}" for v in objects.boxes[i]]
                        + [f"{objects.sizes[i]:.2f}"]
                    )  # fmt: skip


def _csv_number(value: Optional[float]) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _plot(report: Dict, filename: str, zero: bool) -> None:
    """One line per (rule, scale): mean count per object (or % of objects with 0) against the
    object size, matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    results: List[ScaleResult] = report["_results"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=100)
    styles = ["-", "--", ":", "-."]
    labels, plotted = set(), []
    for k, result in enumerate(results):
        for j, q in enumerate(quantities(result)):
            centre, mean, zero_pct = zero_fraction_by_bin(result.objects.sizes, q.values)
            label = q.rule if q.label == "positive points" else f"{q.rule}: {q.label}"
            label = f"{label}, short side {result.objects.scale}"
            labels.add(label)
            plotted += list(centre[np.isfinite(mean)])
            ax.plot(
                centre, zero_pct if zero else mean, styles[k % len(styles)], marker="o",
                markersize=3, color=f"C{j % 10}", label=label,
            )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks([4, 8, 16, 32, 64, 128, 256, 512, 1024])
    if plotted:
        ax.set_xlim(min(plotted) / 1.25, max(plotted) * 1.25)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("object size: sqrt(box area) in the original image (px)")
    what = results[0].rules[0].per_level is not None if results else True
    if zero:
        ax.set_ylabel("% of objects " + ("without a positive" if what else
                                         "without an in-box location"))  # fmt: skip
    else:
        ax.set_ylabel("per object (mean): " + ("positive points" if what else
                                               "locations"))  # fmt: skip
    for x in (16, 32, 96):
        ax.axvline(x, color="0.8", lw=0.8, zorder=0)
    ax.grid(True, which="both", alpha=0.3)
    if labels:
        ax.legend(fontsize=7)
    ax.set_title(f"{report['meta_architecture']}: {os.path.basename(report['config_file'])}",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(filename)
    plt.close(fig)
