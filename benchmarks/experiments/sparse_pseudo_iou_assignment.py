#!/usr/bin/env python
"""
Pseudo-IoU's point assignment, the two entries of ``pseudo_iou.assignment.PointAssigner``:
the dense ``__call__`` against the sparse ``assign_grid`` that the detector trains with.

``PointAssigner.__call__`` (like Detectron2's FCOS ``match_anchors``) builds the (R, G, 4)
point-to-box distances of all R points and G boxes, then reduces over the 4 sides and over the
boxes; time and memory grow with R x G. ``PointAssigner.assign_grid`` (used by
``PseudoIoU.label_points``) works on the pairs with the point strictly inside the box only,
enumerated from the regular point grids by ``anchor_free.inbox.inbox_pairs``. This script checks
that both give the same ``(matched_idxs, candidate_idxs)`` on random images (released settings:
Pseudo-IoU rule, size ranges, min-area tie-break; duplicated boxes for equal areas) and prints
time and peak memory (peak RSS, as in ``benchmarks/timing.py``) for 1 to 1000 boxes at
800x1333.

    .venv/bin/python benchmarks/experiments/sparse_pseudo_iou_assignment.py [--threads 1]
"""
import argparse
import os
import statistics
import sys
import time
from typing import Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository root

from benchmarks.models import random_boxes  # noqa: E402
from benchmarks.timing import PeakMemory  # noqa: E402
from anchor_free.inbox import grid_points, inbox_pairs  # noqa: E402
from anchor_free.meta_arch import build_point_generator  # noqa: E402
from detectron2.structures import Boxes  # noqa: E402
from pseudo_iou.assignment import PointAssigner, size_ranges_from_sizes  # noqa: E402

STRIDES = [8, 16, 32, 64, 128]
OFFSET = 0.5  # Pseudo-IoU points at cell centres (MODEL.PSEUDO_IOU.POINT_OFFSET)


def measure(fn, repeats: int) -> Tuple[float, float]:
    times, peaks = [], []
    for _ in range(repeats):
        with PeakMemory(torch.device("cpu")) as mem:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        peaks.append(mem.peak_mib)
    return 1000 * statistics.median(times), statistics.median(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--boxes", default="1,10,100,300,1000")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    assigner = PointAssigner(size_ranges=size_ranges_from_sizes([64, 128, 256, 512]))
    height, width = 800, 1344  # 800x1333 padded to a multiple of 32
    sizes = [(-(-height // s), -(-width // s)) for s in STRIDES]
    points = grid_points(sizes, STRIDES, OFFSET)  # (R, 2), the detector's points
    per_level = [h * w for h, w in sizes]
    generator = build_point_generator(STRIDES, OFFSET)
    feats = [torch.zeros(1, 1, h, w) for h, w in sizes]
    assert torch.equal(points, Boxes.cat(generator(feats)).get_centers())

    # Agreement on random images, including duplicated boxes (equal areas).
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        boxes = random_boxes(int(torch.randint(1, 200, (1,), generator=g)), 800, 1333, g)
        boxes = torch.cat([boxes, boxes[: seed % 4]])
        dense = assigner(points, per_level, Boxes(boxes))
        sparse = assigner.assign_grid(points, sizes, STRIDES, OFFSET, [Boxes(boxes)])
        assert torch.equal(dense[0], sparse[0][0]) and torch.equal(dense[1], sparse[1][0]), seed
    print("assign_grid == __call__ on 20 random images (matched and candidate indices)")

    print(f"800x1333, R = {points.shape[0]} points, {args.threads} thread(s), median of "
          f"{args.repeats}; peak = peak RSS increase")
    print("| GT boxes | in-box pairs | dense `__call__` ms | dense peak MiB | sparse `assign_grid` "
          "ms | sparse peak MiB |")
    print("|---|---|---|---|---|---|")
    for num in (int(v) for v in args.boxes.split(",")):
        boxes = Boxes(random_boxes(num, 800, 1333, torch.Generator().manual_seed(num)))
        pairs = inbox_pairs(boxes.tensor, sizes, STRIDES, OFFSET).gt_idx.numel()
        d_ms, d_mib = measure(lambda: assigner(points, per_level, boxes), args.repeats)
        s_ms, s_mib = measure(
            lambda: assigner.assign_grid(points, sizes, STRIDES, OFFSET, [boxes]), args.repeats
        )
        print(f"| {num} | {pairs} | {d_ms:.1f} | {d_mib:.0f} | {s_ms:.1f} | {s_mib:.0f} |")


if __name__ == "__main__":
    main()
