"""Numbers of the report from the per-object counts: distributions by object size and by FPN level,
objects left without positives and why, overlaps, and the facts of the recommendation section."""
import dataclasses
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .compute import ScaleResult

__all__ = [
    "SIZE_BUCKETS",
    "SIZE_BINS",
    "Quantity",
    "bucket_masks",
    "describe",
    "facts",
    "quantities",
    "scale_summary",
    "zero_fraction_by_bin",
]

# sqrt(box area) in the original image: COCO's small / medium / large (areas 32^2, 96^2), and
# below 16 px (a part of "small").
SIZE_BUCKETS: Tuple[Tuple[str, float, float], ...] = (
    ("< 16 px", 0.0, 16.0),
    ("small", 0.0, 32.0),
    ("medium", 32.0, 96.0),
    ("large", 96.0, float("inf")),
    ("all", 0.0, float("inf")),
)
# Plot bins (sqrt(2) steps), pixels.
SIZE_BINS = np.array([0, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512, 724, np.inf])


@dataclasses.dataclass
class Quantity:
    """A per-object count of one rule at one scale: ``values`` (G,), named ``label`` for the
    rule ``rule`` (``zero_label`` names objects where it is 0)."""

    rule: str
    label: str
    values: np.ndarray
    is_config: bool
    zero_label: str


def bucket_masks(sizes: np.ndarray) -> Dict[str, np.ndarray]:
    return {name: (sizes >= lo) & (sizes < hi) for name, lo, hi in SIZE_BUCKETS}


def describe(values: np.ndarray) -> Dict[str, float]:
    """objects, mean, p10, p50, p90, max, zero (objects where the value is 0) and zero_pct."""
    n = int(len(values))
    if n == 0:
        return {"objects": 0}
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    zero = int((values == 0).sum())
    return {
        "objects": n,
        "mean": float(values.mean()),
        "p10": float(p10),
        "p50": float(p50),
        "p90": float(p90),
        "max": float(values.max()),
        "zero": zero,
        "zero_pct": 100.0 * zero / n,
    }


def quantities(result: ScaleResult) -> List[Quantity]:
    """Pseudo-IoU: positives per object for each rule. AutoAssign: in-box locations, then the
    effective number of locations under each prior."""
    out = []
    if result.won is not None:
        for r in result.rules:
            out.append(
                Quantity(r.rule.name, "positive points", r.positives, r.rule.is_config,
                         "without a positive")
            )  # fmt: skip
        return out
    out.append(
        Quantity("in box, unweighted", "in-box locations", result.candidates.sum(axis=1),
                 False, "without an in-box location")
    )  # fmt: skip
    for r in result.rules:
        out.append(
            Quantity(r.rule.name, "effective locations", r.effective, r.rule.is_config,
                     "without an in-box location")
        )  # fmt: skip
    return out


def _why_without(result: ScaleResult, positives: np.ndarray, mask: np.ndarray) -> Dict[str, int]:
    """Objects of ``mask`` without a positive, by the first step that leaves them none."""
    none = mask & (positives == 0)
    cand = result.candidates.sum(axis=1)
    return {
        "without_positive": int(none.sum()),
        "no_candidate_point": int((none & (cand == 0)).sum()),
        "all_candidates_to_other_boxes": int((none & (cand > 0) & (result.won == 0)).sum()),
        "rule_rejects_all": int((none & (result.won > 0)).sum()),
    }


def _examples(result: ScaleResult, values: np.ndarray, image_ids, count: int) -> List[Dict]:
    objects = result.objects
    idx = np.nonzero(values == 0)[0][:count]
    return [
        {
            "image_id": _jsonable(image_ids[objects.image_index[i]]),
            "annotation_index": int(objects.ann_index[i]),
            "box_input_xyxy": [round(float(v), 2) for v in objects.boxes[i]],
            "size_px": round(float(objects.sizes[i]), 2),
        }
        for i in idx
    ]


def _jsonable(value):
    return value.item() if isinstance(value, np.generic) else value


def scale_summary(result: ScaleResult, image_ids: Sequence, num_examples: int) -> Dict:
    """Everything the report states about one scale, as plain numbers (JSON-ready)."""
    objects = result.objects
    masks = bucket_masks(objects.sizes)
    hw, counts = np.unique(objects.input_hw, axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:5]
    level_counts_of = lambda per_level: per_level.sum(axis=0)  # noqa: E731
    out = {
        "scale": objects.scale,
        "images": int(len(objects.input_hw)),
        "objects": int(len(objects)),
        "dropped_empty_boxes": objects.num_dropped,
        "input_sizes": [
            {"height": int(hw[i, 0]), "width": int(hw[i, 1]), "images": int(counts[i])}
            for i in order
        ],
        "distinct_input_sizes": int(len(hw)),
        "levels": result.level_names,
        "points_in_boxes": result.points_in_boxes,
        "points_in_several_boxes": result.points_in_several,
        "rows": [],
    }
    by_rule = {r.rule.name: r for r in result.rules}
    for q in quantities(result):
        row = {
            "rule": q.rule,
            "quantity": q.label,
            "is_config": q.is_config,
            "zero_label": q.zero_label,
            "by_size": {name: describe(q.values[m]) for name, m in masks.items()},
            "examples": _examples(result, q.values, image_ids, num_examples),
        }
        rule = by_rule.get(q.rule)
        if rule is not None and rule.per_level is not None:
            levels = level_counts_of(rule.per_level)
            row["by_level"] = _level_table(result.level_names, levels)
            row["overlaps"] = dict(rule.overlaps)
            row["why_without"] = {
                name: _why_without(result, q.values, m) for name, m in masks.items()
            }
        elif q.label == "in-box locations":
            row["by_level"] = _level_table(result.level_names, level_counts_of(result.candidates))
        out["rows"].append(row)
    return out


def _level_table(names: Sequence[str], counts: np.ndarray) -> Dict[str, Dict[str, float]]:
    total = max(int(counts.sum()), 1)
    return {
        name: {"count": int(c), "share_pct": 100.0 * int(c) / total}
        for name, c in zip(names, counts)
    }


def _pct(stats: Dict) -> str:
    return f"{stats['zero_pct']:.1f} %" if stats.get("objects") else "n/a"


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _mean(stats: Dict) -> str:
    return _num(stats["mean"]) if stats.get("objects") else "n/a"


def facts(summaries: Sequence[Dict]) -> List[str]:
    """
    Statements the numbers back, for the recommendation section, per scale. Pseudo-IoU: the
    share of the objects below 16 px and of all objects each rule leaves without a positive,
    and its median positives; why the config's rule leaves objects without one; the points
    with several candidate boxes that end as background although another of their boxes
    passes the rule. AutoAssign: the objects without an in-box location, and over how many
    locations each prior spreads an object's weight.
    """
    lines = []
    for s in summaries:
        rows = s["rows"]
        if not rows or not rows[0]["by_size"]["all"].get("objects"):
            continue
        where = f"Short side {s['scale']}"
        tiny_n = rows[0]["by_size"]["< 16 px"].get("objects", 0)
        if "why_without" in rows[0]:
            lines += _pseudo_iou_facts(where, s, rows, tiny_n)
        else:
            lines += _autoassign_facts(where, rows, tiny_n)
    return lines


def _pseudo_iou_facts(where: str, s: Dict, rows: List[Dict], tiny_n: int) -> List[str]:
    lines = [
        f"{where}: objects without a positive, below 16 px ({tiny_n} objects) / all: "
        + "; ".join(
            f"{r['rule']} {_pct(r['by_size']['< 16 px'])} / {_pct(r['by_size']['all'])}"
            for r in rows
        )
        + ". Median positives per object: "
        + ", ".join(f"{r['rule']} {_num(r['by_size']['all']['p50'])}" for r in rows)
        + "."
    ]
    config = next((r for r in rows if r["is_config"]), rows[0])
    why = config["why_without"]["all"]
    n = why["without_positive"]
    if n:
        lines.append(
            f"{where}: of the {n} objects without a positive under {config['rule']}, "
            f"{100.0 * why['no_candidate_point'] / n:.1f} % have no candidate point (no point "
            "of a level whose size range fits them lies inside the box: no rule or threshold "
            f"gives them one), {100.0 * why['all_candidates_to_other_boxes'] / n:.1f} % lose "
            "every candidate point to another box in the tie-break, "
            f"{100.0 * why['rule_rejects_all'] / n:.1f} % are rejected by the rule."
        )
    several = s["points_in_several_boxes"]
    if several:
        lines.append(
            f"{where}: {several} points ({100.0 * several / max(s['points_in_boxes'], 1):.1f} % "
            "of the points with a candidate box) have several candidate boxes; background "
            "although another of their boxes passes the rule: "
            + ", ".join(
                f"{r['rule']} {100.0 * r['overlaps']['lost_to_tie_break'] / several:.1f} %"
                for r in rows
            )
            + "."
        )
    return lines


def _autoassign_facts(where: str, rows: List[Dict], tiny_n: int) -> List[str]:
    inbox = rows[0]["by_size"]
    lines = [
        f"{where}: {_pct(inbox['< 16 px'])} of the objects below 16 px ({tiny_n} objects) and "
        f"{_pct(inbox['all'])} of all objects have no in-box location: they have no positive "
        "candidate (and add 0 to loss_pos). Median in-box locations per object: "
        f"{_num(inbox['all']['p50'])}."
    ]
    for row in rows[1:]:
        eff = row["by_size"]
        lines.append(
            f"{where}: the {row['rule']} spreads an object's weight over a median of "
            f"{_num(eff['all']['p50'])} effective locations (mean per object, effective / "
            "in-box: below 16 px "
            f"{_mean(eff['< 16 px'])} / {_mean(inbox['< 16 px'])}, medium "
            f"{_mean(eff['medium'])} / {_mean(inbox['medium'])}, large {_mean(eff['large'])} / "
            f"{_mean(inbox['large'])})."
        )
    return lines


def zero_fraction_by_bin(sizes: np.ndarray, values: np.ndarray) -> Tuple[np.ndarray, np.ndarray,
                                                                         np.ndarray]:  # fmt: skip
    """Per plot bin: centre (px), mean of ``values``, % of objects where it is 0 (NaN if
    empty)."""
    which = np.digitize(sizes, SIZE_BINS[1:-1])
    num_bins = len(SIZE_BINS) - 1
    n = np.bincount(which, minlength=num_bins).astype(np.float64)
    total = np.bincount(which, weights=values.astype(np.float64), minlength=num_bins)
    zero = np.bincount(which, weights=(values == 0).astype(np.float64), minlength=num_bins)
    lo, hi = SIZE_BINS[:-1].copy(), SIZE_BINS[1:].copy()
    lo[0], hi[-1] = 4.0, 2 * lo[-1]
    centre = np.sqrt(lo * hi)
    with np.errstate(invalid="ignore", divide="ignore"):
        return centre, np.where(n > 0, total / n, np.nan), np.where(n > 0, 100 * zero / n, np.nan)
