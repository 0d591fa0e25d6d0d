#!/usr/bin/env python
"""
Summarise finished training runs as a Markdown table: the final COCO box AP of each run and the
mean of chosen training statistics, read from each OUTPUT_DIR's ``metrics.json``; with several
seeds of the same run (``<name>_s<seed>`` folders), also their mean and standard deviation.

    python tools/summarize_runs.py output/evidence/pseudo_iou_s* output/evidence/af_baseline_s*

Used for the evidence tables of projects/PseudoIoU/README.md and projects/AutoAssign/README.md.
"""
import argparse
import json
import os
import re
import statistics
import sys
from collections import OrderedDict
from typing import Dict, List, Sequence

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm")
DEFAULT_STATS = (
    "pseudo_iou/num_pos_per_image",
    "pseudo_iou/num_objects_without_pos",
)


def read_run(run_dir: str, stats: Sequence[str] = DEFAULT_STATS) -> Dict[str, float]:
    """
    Returns {"AP": ..., "AP50": ..., ..., <stat>: mean over the logged training iterations}
    for one OUTPUT_DIR. Raises ValueError naming the file when the run has no final evaluation.
    """
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not found (is {run_dir} a training OUTPUT_DIR?)")
    records = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not a JSON line ({e})") from e
    evaluations = [r for r in records if "bbox/AP" in r]
    if not evaluations:
        raise ValueError(f"{path}: no evaluation (bbox/AP) logged; did the run finish?")
    final = evaluations[-1]
    row = {key: float(final[f"bbox/{key}"]) for key in AP_KEYS}
    for stat in stats:
        values = [r[stat] for r in records if stat in r]
        row[stat] = statistics.mean(values) if values else float("nan")
    return row


def _group_name(run_dir: str) -> str:
    return re.sub(r"_s\d+$", "", os.path.basename(os.path.normpath(run_dir)))


def _mean_std(values: List[float]) -> str:
    """Mean ± sample standard deviation (n - 1)."""
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def markdown_table(run_dirs: Sequence[str], stats: Sequence[str] = DEFAULT_STATS) -> str:
    """One row per run, then per group of seeds (2 or more) a row of mean ± sample std."""
    rows = OrderedDict((d, read_run(d, stats)) for d in run_dirs)
    columns = list(AP_KEYS) + list(stats)
    lines = [
        "| run | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for run_dir, row in rows.items():
        cells = [f"{row[c]:.2f}" for c in columns]
        lines.append(f"| {os.path.basename(os.path.normpath(run_dir))} | " + " | ".join(cells) + " |")
    groups: Dict[str, List[Dict[str, float]]] = OrderedDict()
    for run_dir, row in rows.items():
        groups.setdefault(_group_name(run_dir), []).append(row)
    for name, group in groups.items():
        if len(group) < 2:
            continue
        cells = [_mean_std([r[c] for r in group]) for c in columns]
        lines.append(f"| {name}: mean ± std of {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", help="training OUTPUT_DIRs")
    parser.add_argument("--stats", nargs="*", default=list(DEFAULT_STATS),
                        help="metrics.json training statistics to average (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        print(markdown_table(args.run_dirs, args.stats))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
