"""In-box (box, point) pairs on the regular FPN point grids, shared by both detectors.

Both detectors place one point per feature-map cell: point (i, j) of level l sits at
``((j + offset) * s_l, (i + offset) * s_l)``, and the points of all levels are concatenated
finest level first, row-major inside a level (Detectron2's anchor-generator layout, see
:func:`anchor_free.meta_arch.build_point_generator`). With G boxes and L points of an image, a
dense assignment builds [G, L] masks and [G, L, 4] distances, although only the M pairs with the
point strictly inside the box can ever be positive (AutoAssign's loss, the FCOS / Pseudo-IoU
candidates). :func:`inbox_pairs` enumerates exactly those M pairs from the grids (box -> range
of grid cells), in O(M + G x levels) time and memory instead of O(G x L): at 800x1333 with 100
random boxes that is about 0.16 M of 2.2 M pairs.

Naming: G boxes, L points (all levels), M pairs. Distances are in input pixels.
"""
from typing import List, NamedTuple, Tuple

import torch
from torch import Tensor

__all__ = ["InboxPairs", "inbox_pairs", "location_strides", "grid_points"]


class InboxPairs(NamedTuple):
    """The M (object, location) pairs with the location strictly inside the object's box,
    sorted by object, then by location (the order of ``nonzero`` on a [G, L] mask)."""

    gt_idx: Tensor  # (M,) long, object index in [0, G)
    loc_idx: Tensor  # (M,) long, location index in [0, L)
    ltrb: Tensor  # (M, 4) float, (x - x0, y - y0, x1 - x, y1 - y) in pixels, all > 0
    stride: Tensor  # (M,) float, stride of the location's level


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
    The point coordinates :func:`inbox_pairs` works with, computed with the same formula.

    Args:
        grid_sizes: per level (H_l, W_l); strides: per level s_l; offset: point offset in cells.
    Returns:
        (L, 2) (x, y) = ((j + offset) * s_l, (i + offset) * s_l), levels concatenated finest
        first, row-major. Detectron2's anchor generator gives bitwise the same centres for
        offsets 0.0 and 0.5 (not for every offset: it computes them differently).
    """
    points = []
    for (height, width), stride in zip(grid_sizes, strides):
        stride_t = torch.tensor(float(stride), dtype=dtype, device=device)
        xs = (torch.arange(width, device=device).to(dtype) + offset) * stride_t
        ys = (torch.arange(height, device=device).to(dtype) + offset) * stride_t
        points.append(
            torch.stack([xs[None, :].expand(height, -1), ys[:, None].expand(-1, width)], dim=2)
            .reshape(-1, 2)
        )
    if not points:
        return torch.zeros((0, 2), dtype=dtype, device=device)
    return torch.cat(points)


def inbox_pairs(
    gt_boxes: Tensor, grid_sizes: List[Tuple[int, int]], strides: List[int], offset: float
) -> InboxPairs:
    """
    All (object, location) pairs with the location strictly inside the box (every FPN level,
    no size range, no radius), without building a [G, L] mask.

    Location (i, j) of level l is at ((j + offset) * s_l, (i + offset) * s_l) and has index
    ``sum_{l' < l} H_l' W_l' + i * W_l + j`` (Detectron2's anchor-generator layout). For each box
    and level the candidate cells are the grid range covering the box, widened by one cell; the
    exact strict test ``min(l, t, r, b) > 0`` then keeps the inside ones, so the result equals
    ``nonzero(ltrb.min(-1) > 0)`` of the dense [G, L, 4] targets.

    Args:
        gt_boxes: (G, 4) XYXY boxes in input pixels; must be finite.
        grid_sizes: per level (H_l, W_l).
        strides: per level stride s_l.
        offset: point offset in cells (AutoAssign: 0.0, Pseudo-IoU: 0.5).
    Returns:
        InboxPairs with M entries (M = 0 when no box contains a location).
    """
    device, dtype = gt_boxes.device, gt_boxes.dtype
    num_levels = len(strides)
    # Per level: stride, grid height / width, index of its first location. Shapes (1, levels).
    stride = torch.tensor(strides, dtype=dtype, device=device)[None]
    height = torch.tensor([h for h, _ in grid_sizes], device=device)[None]
    width = torch.tensor([w for _, w in grid_sizes], device=device)[None]
    sizes = (height * width)[0]
    level_start = (torch.cumsum(sizes, 0) - sizes)[None]
    x0, y0, x1, y1 = (c[:, None] for c in gt_boxes.unbind(dim=1))  # (G, 1) each
    zero = torch.zeros_like(width)
    # Widened candidate ranges per (object, level), inclusive, clamped to the grid: (G, levels).
    j_lo = torch.clamp(torch.floor(x0 / stride - offset).long(), zero, width - 1)
    j_hi = torch.clamp(torch.ceil(x1 / stride - offset).long(), zero, width - 1)
    i_lo = torch.clamp(torch.floor(y0 / stride - offset).long(), zero, height - 1)
    i_hi = torch.clamp(torch.ceil(y1 / stride - offset).long(), zero, height - 1)
    n_x = (j_hi - j_lo + 1).clamp(min=0)
    counts = (n_x * (i_hi - i_lo + 1).clamp(min=0)).reshape(-1)  # (G * levels,)
    # One block of candidates per (object, level), object-major: blocks come out in the order
    # (object, level, row, column), i.e. sorted by (object, location index).
    block = torch.repeat_interleave(torch.arange(counts.shape[0], device=device), counts)
    block_start = torch.cumsum(counts, 0) - counts
    k = torch.arange(block.shape[0], device=device) - block_start[block]
    gt_idx = torch.div(block, num_levels, rounding_mode="floor")
    level = block % num_levels
    n_x = n_x.reshape(-1)[block]
    i = i_lo.reshape(-1)[block] + torch.div(k, n_x, rounding_mode="floor")
    j = j_lo.reshape(-1)[block] + k % n_x
    pair_stride = stride[0, level]
    px = (j.to(dtype) + offset) * pair_stride
    py = (i.to(dtype) + offset) * pair_stride
    boxes = gt_boxes[gt_idx]
    ltrb = torch.stack(
        [px - boxes[:, 0], py - boxes[:, 1], boxes[:, 2] - px, boxes[:, 3] - py], dim=1
    )
    keep = ltrb.min(dim=1).values > 0
    loc_idx = level_start[0, level] + i * width[0, level] + j
    return InboxPairs(gt_idx[keep], loc_idx[keep], ltrb[keep], pair_stride[keep])
