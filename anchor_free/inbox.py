"""In-box (box, point) pairs on the regular FPN point grids, shared by both detectors.

Both detectors place one point per feature-map cell: point (i, j) of level l sits at
``((j + offset) * s_l, (i + offset) * s_l)``, and the points of all levels are concatenated
finest level first, row-major inside a level (Detectron2's anchor-generator layout, see
:func:`anchor_free.meta_arch.build_point_generator`). With G boxes and L points of an image, a
dense assignment builds [G, L] masks and [G, L, 4] distances, although only the M pairs with the
point inside the box can ever be positive (AutoAssign's loss, the FCOS / Pseudo-IoU
candidates). :func:`inbox_pairs` enumerates exactly those M pairs from the grids (box -> range
of grid cells), in O(M + G x levels) time and memory instead of O(G x L): at 800x1333 with 100
random boxes that is about 0.16 M of 2.2 M pairs.

One source of truth for the point coordinates: the distances of the pairs are computed from the
points the detector uses (``points``: the centres of its anchor generator's stride-sized boxes);
the grid formula only chooses, per box and level, a range of candidate cells one cell wider than
the box on every side, which contains every point inside the box whatever the rounding of the
given coordinates. So the result is that of the dense test on exactly those points.

GPU-ready: the whole batch is one call (boxes of all images concatenated), with three
synchronisations whatever the number of images and boxes (``repeat_interleave``'s two host
reads, the number of candidate cells and its check that none is negative, and the number of
pairs kept), and no host-to-device copy (per-level constants are filled on the
device).

Naming: G boxes, L points (all levels), M pairs. Distances are in input pixels.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "InboxPairs",
    "device_vector",
    "grid_points",
    "inbox_pairs",
    "location_strides",
]


class InboxPairs(NamedTuple):
    """The M (object, location) pairs with the location inside the object's box, sorted by
    object, then by location (the order of ``nonzero`` on a [G, L] mask)."""

    gt_idx: Tensor  # (M,) long, object index in [0, G)
    loc_idx: Tensor  # (M,) long, location index in [0, L)
    ltrb: Tensor  # (M, 4) float, (x - x0, y - y0, x1 - x, y1 - y) in pixels, all > 0
    stride: Tensor  # (M,) float, stride of the location's level


def device_vector(values: Sequence[float], dtype: torch.dtype, device) -> Tensor:
    """
    (len(values),) tensor of Python numbers made on ``device`` by fills: no host-to-device copy
    (``torch.tensor(values, device="cuda")`` copies from pageable memory, which waits for the
    device).
    """
    if len(values) == 0:
        return torch.zeros((0,), dtype=dtype, device=device)
    return torch.cat([torch.full((1,), v, dtype=dtype, device=device) for v in values])


def location_strides(
    grid_sizes: List[Tuple[int, int]], strides: List[int], device: torch.device
) -> Tensor:
    """(L,) float: the stride of each location, levels concatenated finest first."""
    return torch.cat(
        [
            torch.full((h * w,), float(s), device=device)
            for (h, w), s in zip(grid_sizes, strides)
        ]
    )


def grid_points(
    grid_sizes: List[Tuple[int, int]],
    strides: List[int],
    offset: float,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device = None,
) -> Tensor:
    """
    Points on the grids by the formula, for callers without an anchor generator (tests,
    benchmarks); the detectors pass their generator's points to :func:`inbox_pairs`.

    Args:
        grid_sizes: per level (H_l, W_l); strides: per level s_l; offset: point offset in cells.
    Returns:
        (L, 2) (x, y) = ((j + offset) * s_l, (i + offset) * s_l), levels concatenated finest
        first, row-major. Detectron2's anchor generator gives bitwise the same centres for
        offsets 0.0 and 0.5 (not for every offset: it computes them differently).
    """
    points = []
    for (height, width), stride in zip(grid_sizes, strides):
        xs = (torch.arange(width, device=device).to(dtype) + offset) * float(stride)
        ys = (torch.arange(height, device=device).to(dtype) + offset) * float(stride)
        points.append(
            torch.stack([xs[None, :].expand(height, -1), ys[:, None].expand(-1, width)], dim=2)
            .reshape(-1, 2)
        )
    if not points:
        return torch.zeros((0, 2), dtype=dtype, device=device)
    return torch.cat(points)


def inbox_pairs(
    gt_boxes: Tensor,
    grid_sizes: List[Tuple[int, int]],
    strides: List[int],
    offset: float,
    *,
    points: Optional[Tensor] = None,
    strict: bool = True,
    level_ranges: Optional[Tensor] = None,
) -> InboxPairs:
    """
    All (object, location) pairs with the location inside the box, without building a [G, L]
    mask: the result equals ``nonzero(ltrb.min(-1) > 0)`` (``>= 0`` if not ``strict``) of the
    dense [G, L, 4] distances from ``points`` to the boxes, further restricted to
    ``lo <= max(l, t, r, b) <= hi`` of the location's level with ``level_ranges``.

    For each box and level the candidate cells are the grid range covering the box, widened by
    one cell; the exact test on the given points then keeps the inside ones. With
    ``level_ranges``, a (box, level) whose size cannot match the level's range is not
    enumerated at all (a point inside a W x H box has ``max(l, t, r, b)`` in
    ``[max(W, H) / 2, max(W, H)]``; the test is widened by one stride against rounding): a
    500-px box gives no P3 candidates.

    Args:
        gt_boxes: (G, 4) XYXY boxes in input pixels, finite (any number of images: the boxes of
            a batch concatenated give the pairs of every image, ``loc_idx`` within the image).
        grid_sizes: per level (H_l, W_l).
        strides: per level stride s_l.
        offset: point offset in cells (AutoAssign: 0.0, Pseudo-IoU: 0.5) of the candidate
            ranges.
        points: (L, 2) the detector's point coordinates, levels concatenated finest first,
            row-major; default :func:`grid_points`.
        strict: inside means all of l, t, r, b > 0 (else >= 0).
        level_ranges: (levels, 2) [lo, hi] inclusive bounds of ``max(l, t, r, b)`` per level.
    Returns:
        InboxPairs with M entries (M = 0 when no box contains a location).
    """
    device, dtype = gt_boxes.device, gt_boxes.dtype
    num_levels = len(strides)
    if points is None:
        points = grid_points(grid_sizes, strides, offset, dtype=dtype, device=device)
    # Per level: stride, grid height / width, index of its first location. Shapes (levels,).
    level_sizes = [int(h) * int(w) for h, w in grid_sizes]
    level_starts = [sum(level_sizes[:i]) for i in range(num_levels)]
    stride = device_vector([float(s) for s in strides], dtype, device)
    height = device_vector([int(h) for h, _ in grid_sizes], torch.long, device)
    width = device_vector([int(w) for _, w in grid_sizes], torch.long, device)
    level_start = device_vector(level_starts, torch.long, device)
    x0, y0, x1, y1 = (c[:, None] for c in gt_boxes.unbind(dim=1))  # (G, 1) each
    zero = torch.zeros_like(width)
    # Widened candidate ranges per (object, level), inclusive, clamped to the grid: (G, levels).
    j_lo = torch.clamp(torch.floor(x0 / stride - offset).long(), zero, width - 1)
    j_hi = torch.clamp(torch.ceil(x1 / stride - offset).long(), zero, width - 1)
    i_lo = torch.clamp(torch.floor(y0 / stride - offset).long(), zero, height - 1)
    i_hi = torch.clamp(torch.ceil(y1 / stride - offset).long(), zero, height - 1)
    n_x = (j_hi - j_lo + 1).clamp(min=0)
    counts = n_x * (i_hi - i_lo + 1).clamp(min=0)  # (G, levels)
    if level_ranges is not None:
        size = torch.maximum(x1 - x0, y1 - y0)  # (G, 1)
        lo, hi = level_ranges[:, 0].to(dtype), level_ranges[:, 1].to(dtype)
        possible = (size >= lo - stride) & (size / 2 <= hi + stride)  # (G, levels)
        counts = counts * possible
    counts = counts.reshape(-1)  # (G * levels,)
    # One block of candidates per (object, level), object-major: blocks come out in the order
    # (object, level, row, column), i.e. sorted by (object, location index). Per candidate:
    # its block's first candidate, row length, first location, grid width and level, each
    # repeated over the block (repeat_interleave with output_size: no further synchronisation).
    block = torch.repeat_interleave(torch.arange(counts.shape[0], device=device), counts)
    num_candidates = block.shape[0]

    def per_candidate(per_block: Tensor) -> Tensor:
        return torch.repeat_interleave(per_block.reshape(-1), counts, output_size=num_candidates)

    first_loc = level_start + i_lo * width + j_lo  # (G, levels)
    block_first = torch.cumsum(counts, 0) - counts
    # In place where possible: the candidates outnumber the pairs (2 M at 1000 random boxes in
    # an 800x1333 image), so each (candidates,) temporary is 10-20 MB.
    col = torch.arange(num_candidates, device=device).sub_(per_candidate(block_first))
    row_length = per_candidate(n_x)
    row = torch.div(col, row_length, rounding_mode="floor")
    col.sub_(row_length.mul_(row))  # column within the candidate range
    del row_length
    loc_idx = row.mul_(per_candidate(width.expand_as(first_loc)))
    loc_idx.add_(per_candidate(first_loc)).add_(col)
    del col
    level = block.remainder(num_levels)
    gt_idx = block.div_(num_levels, rounding_mode="floor")
    # The dense distances' dtype (Detectron2's pairwise_point_box_distance promotes).
    work_dtype = torch.promote_types(points.dtype, dtype)
    xy = points.index_select(0, loc_idx).to(work_dtype)
    # ltrb = (x - x0, y - y0, x1 - x, y1 - y), written over the gathered boxes (a fresh tensor);
    # -x0 + x is bitwise x - x0.
    ltrb = gt_boxes.index_select(0, gt_idx).to(work_dtype)
    ltrb[:, :2].neg_().add_(xy)
    ltrb[:, 2:].sub_(xy)
    del xy
    nearest = ltrb.min(dim=1).values
    keep = nearest > 0 if strict else nearest >= 0
    if level_ranges is not None:
        farthest = ltrb.max(dim=1).values
        bounds = level_ranges.index_select(0, level)
        keep &= (farthest >= bounds[:, 0]) & (farthest <= bounds[:, 1])
    kept = keep.nonzero()[:, 0]  # one synchronisation; long indices below do not synchronise
    return InboxPairs(
        gt_idx.index_select(0, kept),
        loc_idx.index_select(0, kept),
        ltrb.index_select(0, kept),
        stride.index_select(0, level.index_select(0, kept)),
    )
