#!/usr/bin/env python
"""
Local experiment behind the benchmark report: Pseudo-IoU's point assignment on the in-box
(point, box) pairs only, against the dense (R, G, 4) ``PointAssigner`` of ``pseudo_iou``.

``PointAssigner.__call__`` (like Detectron2's FCOS ``match_anchors``) builds the (R, G, 4)
point-to-box distances of all R points and G boxes, then reduces over the 4 sides and over the
boxes; time and memory grow with R x G. Only the pairs with the point strictly inside the box
can be candidates, and ``anchor_free.inbox.inbox_pairs`` already enumerates exactly those from
the regular point grids. This script builds the same ``(matched_idxs, candidate_idxs)`` from
them (size ranges, min-area tie-break with the lowest box index on equal areas, then the
Pseudo-IoU rule on the chosen box), checks that both agree on random images, and prints time
and peak memory (peak RSS, as in ``benchmarks/benchmark.py``) for 1 to 1000 boxes at 800x1333.

    .venv/bin/python benchmarks/experiments/sparse_pseudo_iou_assignment.py [--threads 1]
"""
import argparse
import os
import statistics
import sys
import time
from typing import List, Tuple

import torch
from torch import Tensor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import benchmark as bench  # noqa: E402
from anchor_free.inbox import inbox_pairs  # noqa: E402
from detectron2.structures import Boxes  # noqa: E402
from pseudo_iou.assignment import PointAssigner, size_ranges_from_sizes  # noqa: E402

STRIDES = [8, 16, 32, 64, 128]
OFFSET = 0.5  # Pseudo-IoU points at cell centres


@torch.no_grad()
def sparse_assign(
    assigner: PointAssigner, grid_sizes: List[Tuple[int, int]], gt_boxes: Boxes
) -> Tuple[Tensor, Tensor]:
    """Same outputs as ``assigner(points, num_points_per_level, gt_boxes)`` for
    ``inside_strict=True`` and ``tie_break="min_area"``; memory O(in-box pairs)."""
    boxes = gt_boxes.tensor
    num_points = sum(h * w for h, w in grid_sizes)
    matched = torch.full((num_points,), -1, dtype=torch.long, device=boxes.device)
    candidates = matched.clone()
    if boxes.shape[0] == 0:
        return matched, candidates
    pairs = inbox_pairs(boxes, grid_sizes, STRIDES, OFFSET)
    gt_idx, loc_idx, ltrb = pairs.gt_idx, pairs.loc_idx, pairs.ltrb
    if assigner.size_ranges is not None:  # scale range of the pair's level on max(l, t, r, b)
        ranges = torch.tensor(assigner.size_ranges, dtype=ltrb.dtype, device=ltrb.device)
        level = torch.searchsorted(
            torch.tensor(STRIDES, dtype=ltrb.dtype, device=ltrb.device), pairs.stride
        )
        farthest = ltrb.max(dim=1).values
        ok = (farthest >= ranges[level, 0]) & (farthest <= ranges[level, 1])
        gt_idx, loc_idx, ltrb = gt_idx[ok], loc_idx[ok], ltrb[ok]
    # Min-area box per point; equal areas: the lowest box index (what the dense min returns).
    area = gt_boxes.area()[gt_idx]
    best_area = area.new_full((num_points,), float("inf")).scatter_reduce(
        0, loc_idx, area, "amin"
    )
    is_best = area == best_area[loc_idx]
    big = torch.iinfo(torch.long).max
    best_gt = torch.full((num_points,), big, dtype=torch.long, device=boxes.device)
    best_gt = best_gt.scatter_reduce(0, loc_idx[is_best], gt_idx[is_best], "amin")
    has = best_gt != big
    candidates[has] = best_gt[has]
    chosen = gt_idx == candidates[loc_idx]  # exactly one pair per point with a candidate
    keep = assigner.rule(ltrb[chosen])
    matched[loc_idx[chosen][keep]] = gt_idx[chosen][keep]
    return matched, candidates


def grid(height: int, width: int) -> Tuple[List[Tuple[int, int]], Tensor, List[int]]:
    """Grid sizes, (R, 2) point centres (Detectron2's anchor-generator layout) and R_l."""
    sizes = [(-(-height // s), -(-width // s)) for s in STRIDES]
    points = []
    for (h, w), s in zip(sizes, STRIDES):
        ys, xs = torch.meshgrid(
            (torch.arange(h) + OFFSET) * s, (torch.arange(w) + OFFSET) * s, indexing="ij"
        )
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).float())
    return sizes, torch.cat(points), [h * w for h, w in sizes]


def measure(fn, repeats: int) -> Tuple[float, float]:
    times, peaks = [], []
    for _ in range(repeats):
        with bench.PeakMemory(torch.device("cpu")) as mem:
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
    sizes, points, per_level = grid(height, width)

    # Agreement on random images, including duplicated boxes (equal areas).
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        boxes = bench.random_boxes(int(torch.randint(1, 200, (1,), generator=g)), 800, 1333, g)
        boxes = torch.cat([boxes, boxes[: seed % 4]])
        dense = assigner(points, per_level, Boxes(boxes))
        sparse = sparse_assign(assigner, sizes, Boxes(boxes))
        assert torch.equal(dense[0], sparse[0]) and torch.equal(dense[1], sparse[1]), seed
    print("sparse == dense on 20 random images (matched and candidate indices)")

    print(f"800x1333, R = {points.shape[0]} points, {args.threads} thread(s), median of "
          f"{args.repeats}; peak = peak RSS increase")
    print("| GT boxes | in-box pairs | dense ms | dense peak MiB | sparse ms | sparse peak MiB |")
    print("|---|---|---|---|---|---|")
    for num in (int(v) for v in args.boxes.split(",")):
        boxes = Boxes(bench.random_boxes(num, 800, 1333, torch.Generator().manual_seed(num)))
        pairs = inbox_pairs(boxes.tensor, sizes, STRIDES, OFFSET).gt_idx.numel()
        d_ms, d_mib = measure(lambda: assigner(points, per_level, boxes), args.repeats)
        s_ms, s_mib = measure(lambda: sparse_assign(assigner, sizes, boxes), args.repeats)
        print(f"| {num} | {pairs} | {d_ms:.1f} | {d_mib:.0f} | {s_ms:.1f} | {s_mib:.0f} |")


if __name__ == "__main__":
    main()
