"""By-hand benchmark of the assignment report (``tools/assignment_report.py``) at COCO scale.

Builds the synthetic dataset of the data-check benchmark (``benchmarks/check_inputs.py``
``make_records``: COCO train2017's size, 117,266 records of 640x480 / 480x640 images, 860k
boxes, 1 to 200 px at the original size) without writing any file, and times, in one process,
the report of a config: records to arrays, the mapper's box handling, the batched assignment,
the summary (:func:`anchor_free_app.assignment_report.make_report`), and writing the markdown,
JSON, CSV and plots (``write_report``). Prints a markdown table with wall and CPU time, the
torch threads and the load average (the machine may be shared).

    python benchmarks/assignment_report.py              # Pseudo-IoU release: 1 rule, short side 800
    python benchmarks/assignment_report.py --config-file configs/Base-AutoAssign.yaml
    python benchmarks/assignment_report.py --thresholds 0.3,0.5 --rules af_baseline --scales 640,800
    python benchmarks/assignment_report.py --records 20000 --threads 1
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from anchor_free_app.assignment_report import (  # noqa: E402
    DEFAULT_BATCH_POINTS,
    build_rules,
    make_report,
    read_settings,
    write_report,
)
from benchmarks.check_inputs import COCO_TRAIN2017_IMAGES, make_records  # noqa: E402


def _list(text: str, kind=str):
    return [kind(x) for x in text.split(",") if x.strip()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default="configs/Base-PseudoIoU.yaml")
    parser.add_argument("--records", type=int, default=COCO_TRAIN2017_IMAGES)
    parser.add_argument("--scales", type=lambda t: _list(t, int), default=[800])
    parser.add_argument("--thresholds", type=lambda t: _list(t, float), default=[])
    parser.add_argument("--rules", type=_list, default=[])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--batch-points", type=int, default=DEFAULT_BATCH_POINTS)
    parser.add_argument("--workers", type=int, default=2, help="assignment threads")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = read_settings(args.config_file)
    rules = build_rules(settings, thresholds=args.thresholds, rules=args.rules)
    records = make_records(args.records, args.records, "/synthetic")
    num_boxes = sum(len(r["annotations"]) for r in records)
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    report = make_report(
        settings, records, args.scales, rules, dataset_names=["synthetic"],
        max_points=args.batch_points, workers=args.workers, progress=args.progress,
    )  # fmt: skip
    wall_report, cpu_report = time.perf_counter() - wall, time.process_time() - cpu
    out = tempfile.mkdtemp(prefix="assignment_report_bench_")
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        write_report(report, out)
        wall_write, cpu_write = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        shutil.rmtree(out, ignore_errors=True)
    load_after = os.getloadavg()[0]
    batches = sum(r.num_batches for r in report["_results"])
    what = (
        f"{os.path.basename(args.config_file)}, {len(rules)} rule(s), short side "
        f"{','.join(map(str, args.scales))}: {len(records)} records, {num_boxes} boxes, "
        f"{batches} batches, {args.workers} worker thread(s), "
        f"{torch.get_num_threads()} torch threads otherwise, "
        f"load average {load_before:.1f} -> {load_after:.1f}"
    )
    print(f"\n{what}\n")
    print("| step | wall | CPU (all threads) |\n|---|---|---|")
    print(f"| records -> report (make_report) | {wall_report:.1f} s | {cpu_report:.1f} s |")
    print(f"| files and plots (write_report) | {wall_write:.1f} s | {cpu_write:.1f} s |")
    print(
        f"| total | {wall_report + wall_write:.1f} s | {cpu_report + cpu_write:.1f} s |"
    )
    row = report["summaries"][0]["rows"][0]["by_size"]["all"]
    print(f"\n{report['summaries'][0]['rows'][0]['rule']}: mean {row['mean']:.2f} per object, "
          f"{row['zero_pct']:.2f} % with 0")  # fmt: skip


if __name__ == "__main__":
    main()
