"""Pseudo-IoU label assignment (paper Sec. 3.1, the release's ``PIOUHead.loss``): the metric,
the alternative rules of the paper's Table 2, and the per-image point assigner.

Naming: R = points (all FPN levels concatenated), G = ground-truth boxes of one image, M = in-box
(point, box) pairs. Distances ``ltrb`` are (left, top, right, bottom) from a point to the sides of
a box, as returned by Detectron2's ``pairwise_point_box_distance``; all four are > 0 for a point
strictly inside.

:class:`PointAssigner` has two entries with the same outputs. Training always takes
``assign_grid``: the whole batch at once, on the M in-box pairs of the detector's own points
(:func:`anchor_free.inbox.inbox_pairs`), O(M + R). ``__call__`` takes arbitrary points of one
image and builds the dense (R, G, 4) distances (time and memory O(R x G)): the visualiser
(``anchor_free_app/visualize/pseudo_iou.py``) draws with it, and the tests use it as the
reference of ``assign_grid``.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from anchor_free.config import ConfigKey, check_choice, check_interval, check_min
from anchor_free.inbox import device_vector, inbox_pairs
from detectron2.structures import Boxes, pairwise_point_box_distance

__all__ = [
    "ASSIGNERS",
    "TIE_BREAKS",
    "pseudo_iou",
    "pairwise_pseudo_iou",
    "centerness",
    "in_scaled_box",
    "size_ranges_from_sizes",
    "PointAssigner",
]

ASSIGNERS = ("all_in_box", "pseudo_iou", "centerness", "scaled_box")
TIE_BREAKS = ("min_area", "max_pseudo_iou")
SIZES_OF_INTEREST_KEY = ConfigKey(
    "MODEL.PSEUDO_IOU.SIZES_OF_INTEREST", "model.assigner.size_ranges.sizes_of_interest"
)


def pseudo_iou(ltrb: Tensor) -> Tensor:
    """
    Pseudo-IoU (paper Algorithm 1): IoU between a box B and the "pseudo box" A of the same size
    centred on the point. For a point inside B it equals the closed form ``q / (2 - q)`` with
    ``q = (1 - |dx|/W) (1 - |dy|/H)`` (dx, dy: offset of the point from B's centre).

    Algorithm 1's intersection ``min(l, W/2) + min(r, W/2)`` (clamped at 0) is also the exact
    overlap for points outside B, so the value is the true IoU of the two boxes everywhere.
    Boxes with zero width or height give 0 (no division by a zero area).

    Args:
        ltrb: (..., 4) distances from points to the left, top, right, bottom sides of boxes,
            in any unit (the value is scale invariant).
    Returns:
        (...) Pseudo-IoU in [0, 1].
    """
    left, top, right, bottom = ltrb.unbind(dim=-1)
    width, height = left + right, top + bottom
    half_w, half_h = width / 2, height / 2
    inter_w = (torch.minimum(left, half_w) + torch.minimum(right, half_w)).clamp(min=0)
    inter_h = (torch.minimum(top, half_h) + torch.minimum(bottom, half_h)).clamp(min=0)
    inter = inter_w * inter_h
    area = width * height  # |A| = |B|
    valid = (width > 0) & (height > 0)
    # union >= area > 0 where valid; the inner where keeps the masked entries finite.
    union = torch.where(valid, 2 * area - inter, torch.ones_like(area))
    return torch.where(valid, inter / union, torch.zeros_like(area))


def pairwise_pseudo_iou(points: Tensor, boxes: Boxes) -> Tensor:
    """
    Args:
        points: (R, 2) (x, y) in pixels; boxes: G boxes (XYXY, pixels).
    Returns:
        (R, G) Pseudo-IoU of every point with every box.
    """
    return pseudo_iou(pairwise_point_box_distance(points, boxes))


def centerness(ltrb: Tensor) -> Tensor:
    """
    FCOS centerness ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))`` (paper §4.2 / release).

    Args:
        ltrb: (..., 4) distances (any unit); negative distances are treated as 0.
    Returns:
        (...) values in [0, 1]; 0 where a side pair is all zero.
    """
    ltrb = ltrb.clamp(min=0)
    left_right, top_bottom = ltrb[..., 0::2], ltrb[..., 1::2]

    def ratio(pair: Tensor) -> Tensor:
        high = pair.max(dim=-1).values
        return pair.min(dim=-1).values / high.clamp(min=torch.finfo(pair.dtype).tiny)

    return torch.sqrt(ratio(left_right) * ratio(top_bottom))


def in_scaled_box(ltrb: Tensor, factor: float) -> Tensor:
    """
    Paper §4.2 "scaled-box": ``|x - xc| < s w / 2`` and ``|y - yc| < s h / 2`` (strict), written
    with distances: ``|l - r| < s (l + r)`` and ``|t - b| < s (t + b)``.

    Args:
        ltrb: (..., 4) distances; factor: s > 0.
    Returns:
        (...) bool.
    """
    left, top, right, bottom = ltrb.unbind(dim=-1)
    return ((left - right).abs() < factor * (left + right)) & (
        (top - bottom).abs() < factor * (top + bottom)
    )


def size_ranges_from_sizes(sizes_of_interest: Sequence[float]) -> Tuple[Tuple[float, float], ...]:
    """
    mmdet FCOS ranges from level boundaries: [64, 128, 256, 512] ->
    ((-1, 64), (64, 128), (128, 256), (256, 512), (512, inf)), used with inclusive comparisons.
    """
    sizes = [float(s) for s in sizes_of_interest]
    lows = [-1.0] + sizes
    highs = sizes + [float("inf")]
    return tuple(zip(lows, highs))


def _key(name: str, python: str) -> ConfigKey:
    return ConfigKey(f"MODEL.PSEUDO_IOU.{name}", f"model.assigner.{python}")


@dataclass(frozen=True)
class PointAssigner:
    """
    FCOS rules, then a rule filter against the matched box (``PIOUHead.loss``). For each point:

    1. candidate boxes: the point is inside (``l,t,r,b > 0``, or ``>= 0`` if not
       ``inside_strict``) and, with ``size_ranges``, ``lo <= max(l,t,r,b) <= hi`` of its level
       (pixels, inclusive both ends as in mmdet);
    2. one box among the candidates: the smallest area (``"min_area"``, FCOS/release) or the
       highest Pseudo-IoU (``"max_pseudo_iou"``);
    3. the rule on that box only: ``"all_in_box"`` keeps every point (AF-baseline);
       ``"pseudo_iou"`` keeps Pseudo-IoU > T (>= T if ``thresh_inclusive``); ``"centerness"``
       keeps centerness > c (>= c); ``"scaled_box"`` keeps points inside the box scaled by s.

    Points that fail any step are background (negatives), never ignored.

    Field names are those of ``cfg.MODEL.PSEUDO_IOU`` in lower case; ``size_ranges`` comes from
    ``SIZES_OF_INTEREST`` through :func:`size_ranges_from_sizes` (None without
    ``USE_SCALE_RANGES``).
    """

    assigner: str = "pseudo_iou"
    pseudo_iou_thresh: float = 0.4
    thresh_inclusive: bool = False
    centerness_thresh: float = 0.35
    scaled_box_factor: float = 0.6
    inside_strict: bool = True
    size_ranges: Optional[Tuple[Tuple[float, float], ...]] = None
    tie_break: str = "min_area"

    def __post_init__(self):
        check_choice(_key("ASSIGNER", "assigner"), self.assigner, ASSIGNERS)
        check_choice(_key("TIE_BREAK", "tie_break"), self.tie_break, TIE_BREAKS)
        check_interval(
            _key("PSEUDO_IOU_THRESH", "pseudo_iou_thresh"), float(self.pseudo_iou_thresh), 0, 1
        )
        check_interval(
            _key("CENTERNESS_THRESH", "centerness_thresh"), float(self.centerness_thresh), 0, 1
        )
        check_min(
            _key("SCALED_BOX_FACTOR", "scaled_box_factor"),
            float(self.scaled_box_factor),
            0.0,
            strict=True,
        )
        if self.size_ranges is not None:
            for low, high in self.size_ranges:
                if not low < high:
                    raise ValueError(
                        f"{SIZES_OF_INTEREST_KEY} must be strictly increasing, got "
                        f"ranges {self.size_ranges}"
                    )

    def level_size_ranges(self, num_levels: int, device) -> Tensor:
        """
        Returns:
            (levels, 2) float32 [low, high] of each level; (-inf, inf) without ``size_ranges``.
        """
        if self.size_ranges is None:
            ranges = [(-float("inf"), float("inf"))] * num_levels
        elif len(self.size_ranges) != num_levels:
            raise ValueError(
                f"{len(self.size_ranges)} size ranges ({SIZES_OF_INTEREST_KEY} + 1) "
                f"for {num_levels} feature levels "
                f"({ConfigKey('MODEL.PSEUDO_IOU.IN_FEATURES', 'model.head_in_features')})"
            )
        else:
            ranges = self.size_ranges
        flat = [float(v) for low_high in ranges for v in low_high]
        return device_vector(flat, torch.float32, device).view(num_levels, 2)

    def point_size_ranges(self, num_points_per_level: List[int], device) -> Tensor:
        """
        Returns:
            (R, 2) [low, high] per point (each level's range repeated over its points);
            (-inf, inf) everywhere without ``size_ranges``.
        """
        ranges_t = self.level_size_ranges(len(num_points_per_level), device)  # (levels, 2)
        counts = torch.tensor(num_points_per_level, device=device)
        return ranges_t.repeat_interleave(counts, dim=0)

    def rule(self, ltrb: Tensor) -> Tensor:
        """
        Step 3 alone. Args: ltrb (..., 4) distances to the matched box. Returns: (...) bool.
        """
        if self.assigner == "all_in_box":
            return torch.ones(ltrb.shape[:-1], dtype=torch.bool, device=ltrb.device)
        if self.assigner == "scaled_box":
            return in_scaled_box(ltrb, self.scaled_box_factor)
        if self.assigner == "pseudo_iou":
            value, thresh = pseudo_iou(ltrb), self.pseudo_iou_thresh
        else:  # "centerness"
            value, thresh = centerness(ltrb), self.centerness_thresh
        return value >= thresh if self.thresh_inclusive else value > thresh

    @torch.no_grad()
    def __call__(
        self, points: Tensor, num_points_per_level: List[int], gt_boxes: Boxes
    ) -> Tuple[Tensor, Tensor]:
        """
        Args:
            points: (R, 2) point coordinates in input pixels, levels concatenated in order.
            num_points_per_level: R_l per level (sum R).
            gt_boxes: G boxes of one image (XYXY, input pixels).
        Returns:
            matched_idxs: (R,) int64, index of the box each point is positive for, -1 for
                background.
            candidate_idxs: (R,) int64, the box chosen by steps 1-2 (before the rule), -1 if none.
        """
        num_points, num_gt = points.shape[0], len(gt_boxes)
        if num_gt == 0:
            empty = torch.full((num_points,), -1, dtype=torch.long, device=points.device)
            return empty, empty.clone()
        ltrb = pairwise_point_box_distance(points, gt_boxes)  # (R, G, 4)
        nearest_side = ltrb.min(dim=2).values
        candidate = nearest_side > 0 if self.inside_strict else nearest_side >= 0  # (R, G)
        if self.size_ranges is not None:
            ranges = self.point_size_ranges(num_points_per_level, points.device)  # (R, 2)
            farthest_side = ltrb.max(dim=2).values
            candidate &= (farthest_side >= ranges[:, :1]) & (farthest_side <= ranges[:, 1:])

        if self.tie_break == "min_area":
            inf = torch.tensor(float("inf"), device=points.device)
            cost = torch.where(candidate, gt_boxes.area()[None, :], inf)
            _, candidate_idxs = cost.min(dim=1)
        else:
            quality = torch.where(candidate, pseudo_iou(ltrb), torch.full_like(nearest_side, -1))
            _, candidate_idxs = quality.max(dim=1)
        has_candidate = candidate.any(dim=1)
        candidate_idxs = torch.where(has_candidate, candidate_idxs, -1)

        matched_ltrb = ltrb[
            torch.arange(num_points, device=points.device), candidate_idxs.clamp(min=0)
        ]
        keep = has_candidate & self.rule(matched_ltrb)
        matched_idxs = torch.where(keep, candidate_idxs, -1)
        return matched_idxs, candidate_idxs

    @torch.no_grad()
    def assign_grid(
        self,
        points: Tensor,
        grid_sizes: Sequence[Tuple[int, int]],
        strides: Sequence[int],
        offset: float,
        gt_boxes: Sequence[Boxes],
    ) -> Tuple[Tensor, Tensor]:
        """
        The assignment the detector trains with, for a whole batch at once: the same outputs as
        ``__call__`` on ``points`` for each image, computed on the M in-box (point, box) pairs
        only (time and memory O(M + N R) instead of O(N R G)), with no per-image or per-box
        host synchronisation (three per batch, inside
        :func:`~anchor_free.inbox.inbox_pairs`).

        1. the (image, point, box) pairs with the point inside the box (strictly, or on a side
           too without ``inside_strict``) and, with ``size_ranges``, ``max(l, t, r, b)`` in the
           level's range (float32 bounds, inclusive): ``inbox_pairs`` on the boxes of all
           images, which does not even enumerate a (box, level) whose size cannot match;
        2. per (image, point), the box of smallest area (``"min_area"``) or highest Pseudo-IoU
           (``"max_pseudo_iou"``) with ``scatter_reduce``; ties go to the lowest box index,
           which is what the dense ``min`` / ``max`` over boxes return (first extremal index);
        3. :meth:`rule` on the chosen pair only.

        Args:
            points: (R, 2) the detector's point coordinates in input pixels (the centres of
                its anchor generator's boxes), levels concatenated finest first, row-major, on
                the grids ``grid_sizes`` (R = sum_l H_l W_l).
            grid_sizes: per level (H_l, W_l).
            strides: per level stride s_l in input pixels.
            offset: point offset in cells (Pseudo-IoU: 0.5, cell centres), for the candidate
                cell ranges only (the distances are computed from ``points``).
            gt_boxes: per image, G_n boxes (XYXY, input pixels, finite).
        Returns:
            matched_idxs: (N, R) int64, index into the image's boxes of the box each point is
                positive for, -1 for background.
            candidate_idxs: (N, R) int64, the box chosen by steps 1-2 (before the rule), -1 if
                none.
        """
        if len(grid_sizes) != len(strides):
            raise ValueError(f"{len(grid_sizes)} grid sizes for {len(strides)} strides")
        expected = [int(h) * int(w) for h, w in grid_sizes]
        num_points, device = points.shape[0], points.device
        if num_points != sum(expected):
            raise ValueError(
                f"{num_points} points do not match the feature grids {list(grid_sizes)} "
                f"(H x W = {expected}); pass the point generator's points on those grids"
            )
        ranges = None
        if self.size_ranges is not None:
            ranges = self.level_size_ranges(len(grid_sizes), device)  # checks the level count
        num_images = len(gt_boxes)
        counts = [len(b) for b in gt_boxes]
        matched = torch.full((num_images, num_points), -1, dtype=torch.long, device=device)
        if sum(counts) == 0 or num_points == 0:
            return matched, matched.clone()
        boxes = Boxes(torch.cat([b.tensor for b in gt_boxes]))  # (G, 4), G over the batch
        starts = [sum(counts[:n]) for n in range(num_images)]
        # Per box: its image, and the batch index of its image's first box. (G,) each.
        box_image = torch.cat(
            [torch.full((c,), n, dtype=torch.long, device=device) for n, c in enumerate(counts)]
        )
        box_start = torch.cat(
            [torch.full((c,), s, dtype=torch.long, device=device) for s, c in zip(starts, counts)]
        )
        pairs = inbox_pairs(
            boxes.tensor,
            list(grid_sizes),
            list(strides),
            offset,
            points=points,
            strict=self.inside_strict,
            level_ranges=ranges,
        )
        gt_idx, ltrb = pairs.gt_idx, pairs.ltrb
        key = box_image[gt_idx] * num_points + pairs.loc_idx  # (M,) (image, point)
        size = num_images * num_points

        # Step 2: best value per (image, point), then the lowest box index reaching it.
        if self.tie_break == "min_area":
            value = boxes.area()[gt_idx]
            best = value.new_full((size,), float("inf")).scatter_reduce(0, key, value, "amin")
        else:
            value = pseudo_iou(ltrb)
            best = value.new_full((size,), -1.0).scatter_reduce(0, key, value, "amax")
        no_box = torch.iinfo(torch.long).max
        best_gt = torch.full((size,), no_box, dtype=torch.long, device=device)
        best_gt = best_gt.scatter_reduce(
            0, key, torch.where(value == best[key], gt_idx, no_box), "amin"
        )
        candidates = torch.where(best_gt != no_box, best_gt, -1)

        # Step 3 on the chosen pair ((image, point, box) pairs are unique: one per point).
        keep = (gt_idx == candidates[key]) & self.rule(ltrb)
        matched = matched.view(-1).scatter_reduce(0, key, torch.where(keep, gt_idx, -1), "amax")

        # Batch box indices -> the image's box indices.
        def local(idx: Tensor) -> Tensor:
            local_idx = torch.where(idx >= 0, idx - box_start[idx.clamp(min=0)], -1)
            return local_idx.view(num_images, num_points)

        return local(matched), local(candidates)
