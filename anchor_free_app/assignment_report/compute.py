"""Run the training's assignment on every image of a dataset, in batches of images of equal input
size, and count per object.

Per batch (N images padded to the same size, R points of all levels, the objects' boxes as
the mapper gives them, see :mod:`.objects`):

* Pseudo-IoU: each rule's ``PointAssigner.assign_grid`` (what ``PseudoIoU.label_points``
  calls), on the points of the model's point generator; positives per (object, level). Once per
  batch, :func:`~anchor_free.inbox.inbox_pairs` with the assigner's own candidate settings
  (inside strictly or not, level size ranges) gives the FCOS candidates of each object and the
  points with several candidate boxes; each rule's :meth:`PointAssigner.rule` on those pairs
  tells how the tie-break and the rule resolved them.
* AutoAssign: ``inbox_pairs`` as ``AutoAssign.forward_training`` calls it (the in-box
  locations of each object) and each :class:`~autoassign.center_prior.CenterPrior`'s weights on
  them: the effective number of locations ``(sum w)^2 / sum w^2`` (= 1 / sum of the squared
  normalised weights) per object.

Images are batched as training pads them: to the backbone's ``size_divisibility``; the feature
grid of stride s is ceil(padded size / s) (stride-2 convolutions of the ResNet-FPN, tested
against the backbone). Every point inside an image lies on that grid, so the counts do not
depend on which images share a batch.
"""
import dataclasses
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from anchor_free.inbox import inbox_pairs
from detectron2.structures import Boxes

from .objects import ObjectTable
from .settings import Rule

__all__ = ["RuleCounts", "ScaleResult", "assign_objects", "feature_grid_sizes"]

# Images x points per batch: bounds the (N, R) tensors of assign_grid (2 MB each). Larger
# batches are not faster on the CPU: tensors past malloc's mmap threshold are returned to the
# system and page-faulted in again at every batch (3x the system time at 1 << 20).
DEFAULT_BATCH_POINTS = 1 << 18


@dataclasses.dataclass
class RuleCounts:
    """
    One rule's counts at one scale (G objects, L levels).

    Attributes:
        rule: the rule.
        per_level: (G, L) int64, positive points of each object on each level (Pseudo-IoU), or
            None (AutoAssign: the in-box locations are :attr:`ScaleResult.candidates`).
        effective: (G,) float64, effective number of locations under the prior (AutoAssign), or
            None.
        overlaps: points with several candidate boxes (Pseudo-IoU): "positive" (for the box the
            tie-break chose), "lost_to_tie_break" (background: the chosen box fails the rule,
            another candidate passes it), "no_box_passes" (background: every candidate fails).
    """

    rule: Rule
    per_level: Optional[np.ndarray] = None
    effective: Optional[np.ndarray] = None
    overlaps: Dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def positives(self) -> np.ndarray:
        """(G,) positive points per object."""
        return self.per_level.sum(axis=1)


@dataclasses.dataclass
class ScaleResult:
    """
    The counts of all rules at one training scale.

    Attributes:
        objects: the objects (see :class:`~.objects.ObjectTable`).
        level_names: the head's input features, e.g. ["p3", ..., "p7"].
        candidates: (G, L) int64, per object and level: Pseudo-IoU's FCOS candidates (inside
            the box and in the level's size range), AutoAssign's in-box locations.
        won: (G,) int64, Pseudo-IoU: the candidates whose tie-break chose this object (the
            points a rule can keep); None for AutoAssign.
        points_in_boxes: points (over all images) with at least one candidate box.
        points_in_several: points with two or more candidate boxes.
        rules: per rule.
        num_batches: batches the images were assigned in.
    """

    objects: ObjectTable
    level_names: List[str]
    candidates: np.ndarray
    won: Optional[np.ndarray]
    points_in_boxes: int
    points_in_several: int
    rules: List[RuleCounts]
    num_batches: int


def feature_grid_sizes(
    padded_hw: Tuple[int, int], strides: Sequence[int]
) -> List[Tuple[int, int]]:
    """(H_l, W_l) = ceil(padded / s_l) per level: the output of stride-2 convolutions (kernel 3,
    padding 1, or kernel 1) from the padded input, which the ResNet-FPN P3-P7 gives."""
    h, w = padded_hw
    return [(math.ceil(h / s), math.ceil(w / s)) for s in strides]


@dataclasses.dataclass
class _Batch:
    padded_hw: Tuple[int, int]
    images: np.ndarray  # (N,) record indices
    counts: np.ndarray  # (N,) objects per image
    objects: np.ndarray  # (G_b,) object indices, image by image


def _batches(
    objects: ObjectTable, size_divisibility: int, num_points, max_points: int
) -> List[_Batch]:
    """Images with objects grouped by padded input size, then cut into batches of at most
    ``max_points`` images x points (at least one image)."""
    num_images = len(objects.input_hw)
    counts = np.bincount(objects.image_index, minlength=num_images)
    starts = np.cumsum(counts) - counts
    images = np.nonzero(counts)[0]
    d = max(int(size_divisibility), 1)
    padded = -(-objects.input_hw[images] // d) * d  # (I', 2)
    order = np.lexsort((images, padded[:, 1], padded[:, 0]))
    images, padded = images[order], padded[order]
    change = np.nonzero(np.any(np.diff(padded, axis=0) != 0, axis=1))[0] + 1
    out = []
    for group in np.split(np.arange(len(images)), change):
        if len(group) == 0:
            continue
        hw = (int(padded[group[0], 0]), int(padded[group[0], 1]))
        per_batch = max(1, max_points // max(num_points(hw), 1))
        for start in range(0, len(group), per_batch):
            imgs = images[group[start : start + per_batch]]
            c = counts[imgs]
            first = np.repeat(starts[imgs] - (np.cumsum(c) - c), c)
            out.append(_Batch(hw, imgs, c, first + np.arange(int(c.sum()))))
    return out


class _Grid:
    """Points of the model's point generator on the grids of one padded size (cached)."""

    def __init__(self, model, padded_hw: Tuple[int, int]):
        self.strides = [int(s) for s in model.point_generator.strides]
        self.offset = float(model.point_generator.offset)
        self.grid_sizes = feature_grid_sizes(padded_hw, self.strides)
        shapes = [torch.empty((1, 0, h, w)) for h, w in self.grid_sizes]
        points = model.point_generator(shapes)  # per level, Boxes (H_l W_l, 4)
        self.centers = Boxes.cat(points).get_centers()  # (R, 2), as label_points
        per_level = torch.tensor([h * w for h, w in self.grid_sizes])
        self.level = torch.repeat_interleave(torch.arange(len(self.strides)), per_level)  # (R,)

    @property
    def num_points(self) -> int:
        return self.centers.shape[0]


def _per_object_level(obj: Tensor, level: Tensor, num_objects: int, num_levels: int) -> Tensor:
    """(G_b, L) counts of (object, level) pairs."""
    flat = torch.bincount(obj * num_levels + level, minlength=num_objects * num_levels)
    return flat.view(num_objects, num_levels)


def _check_classes(objects: ObjectTable, num_classes: int, image_ids) -> None:
    bad = np.nonzero((objects.classes < 0) | (objects.classes >= num_classes))[0]
    if len(bad):
        i = bad[0]
        raise ValueError(
            f"Image {image_ids[objects.image_index[i]]!r}, annotation "
            f"{objects.ann_index[i]}: category_id {objects.classes[i]} outside [0, "
            f"{num_classes}) (the config's NUM_CLASSES is {num_classes}); training would stop "
            "on it too"
        )


@torch.no_grad()
def assign_objects(
    model,
    objects: ObjectTable,
    rules: Sequence[Rule],
    image_ids: Sequence,
    num_classes: int,
    *,
    max_points: int = DEFAULT_BATCH_POINTS,
    workers: int = 1,
    progress: bool = False,
) -> ScaleResult:
    """
    Count, per object, what each rule gives (module docstring).

    Args:
        model: the detector (PseudoIoU or AutoAssign), built on the CPU; only its point
            generator, backbone padding, assigner and center prior are used.
        objects: the objects at one scale (:func:`~.objects.resize_objects`).
        rules: Pseudo-IoU rules (``Rule.assigner``) or AutoAssign priors
            (``Rule.center_prior``), not mixed.
        image_ids: per record, for error messages.
        num_classes: K; objects of another class are an error naming the image.
        max_points: images x points per batch.
        workers: batches assigned at once by that many Python threads (torch ops release the
            GIL), each with one torch thread (``torch.set_num_threads(1)`` meanwhile; restored).
        progress: show a tqdm progress bar (images).
    """
    _check_classes(objects, num_classes, image_ids)
    is_piou = rules[0].assigner is not None
    if any((r.assigner is not None) != is_piou for r in rules):
        raise ValueError("assign_objects: Pseudo-IoU rules and AutoAssign priors mixed")
    num_levels = len(model.point_generator.strides)
    num_objects = len(objects)
    strides = [int(s) for s in model.point_generator.strides]
    counts_of = lambda hw: sum(h * w for h, w in feature_grid_sizes(hw, strides))  # noqa: E731
    size_div = int(getattr(model.backbone, "size_divisibility", 0) or 0)
    batches = _batches(objects, size_div, counts_of, max_points)
    grids = {hw: _Grid(model, hw) for hw in sorted({b.padded_hw for b in batches})}

    candidates = np.zeros((num_objects, num_levels), dtype=np.int64)
    won = np.zeros(num_objects, dtype=np.int64) if is_piou else None
    results = [
        RuleCounts(
            rule,
            per_level=np.zeros((num_objects, num_levels), dtype=np.int64) if is_piou else None,
            effective=None if is_piou else np.zeros(num_objects, dtype=np.float64),
            overlaps={"positive": 0, "lost_to_tie_break": 0, "no_box_passes": 0}
            if is_piou
            else {},
        )
        for rule in rules
    ]
    totals = {"in_boxes": 0, "several": 0}
    all_boxes = torch.from_numpy(objects.boxes)
    all_classes = torch.from_numpy(objects.classes)
    step = _PseudoIoUBatch if is_piou else _AutoAssignBatch
    lock = threading.Lock()  # the counters; batches write disjoint rows of the arrays

    def work(batch: _Batch) -> int:
        with torch.no_grad():  # per thread
            obj = torch.from_numpy(batch.objects)
            boxes, classes = all_boxes.index_select(0, obj), all_classes.index_select(0, obj)
            counts = torch.from_numpy(batch.counts)
            step(model, grids[batch.padded_hw], boxes, classes, counts).run(
                results, batch.objects, candidates, won, totals, lock
            )
        return len(batch.images)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=int(sum(len(b.images) for b in batches)), unit="img", leave=False)
    if workers > 1:
        # One torch thread per worker: the ops are small, and intra-op threads on a busy
        # machine spin far longer than they work.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                for done in pool.map(work, batches):
                    if bar is not None:
                        bar.update(done)
        finally:
            torch.set_num_threads(threads)
    else:
        for batch in batches:
            done = work(batch)
            if bar is not None:
                bar.update(done)
    if bar is not None:
        bar.close()
    return ScaleResult(
        objects=objects,
        level_names=list(model.head_in_features),
        candidates=candidates,
        won=won,
        points_in_boxes=totals["in_boxes"],
        points_in_several=totals["several"],
        rules=results,
        num_batches=len(batches),
    )


class _BatchBase:
    def __init__(self, model, grid: _Grid, boxes: Tensor, classes: Tensor, counts: Tensor):
        self.model, self.grid, self.boxes, self.classes = model, grid, boxes, classes
        self.num_images = counts.shape[0]
        self.num_objects = boxes.shape[0]
        self.box_image = torch.repeat_interleave(torch.arange(self.num_images), counts)  # (G_b,)
        self.first_box = torch.cumsum(counts, 0) - counts  # (N,)
        self.num_levels = len(grid.strides)

    def pairs(self, **kwargs):
        """In-box pairs and their (image, point) keys in [0, N R)."""
        g = self.grid
        pairs = inbox_pairs(
            self.boxes, g.grid_sizes, g.strides, g.offset, points=g.centers, **kwargs
        )
        key = self.box_image.index_select(0, pairs.gt_idx) * g.num_points + pairs.loc_idx
        return pairs, key

    def count_points(
        self, key: Tensor, totals: Dict[str, int], lock: threading.Lock
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """
        The distinct (image, point) keys of the pairs, sorted, with each pair's position among
        them and their number of candidate boxes: O(M log M) on the M pairs, not O(N R).
        Adds the points in a box and in several boxes to ``totals``.
        """
        keys, inverse, per_key = torch.unique(key, return_inverse=True, return_counts=True)
        several = int((per_key > 1).sum())
        with lock:
            totals["in_boxes"] += int(keys.shape[0])
            totals["several"] += several
        return keys, inverse, per_key


class _PseudoIoUBatch(_BatchBase):
    def run(self, results, objects, candidates, won, totals, lock) -> None:
        g, L = self.grid, self.num_levels
        base = results[0].rule.assigner
        ranges = None
        if base.size_ranges is not None:
            ranges = base.level_size_ranges(L, self.boxes.device)
        pairs, key = self.pairs(strict=base.inside_strict, level_ranges=ranges)
        level = g.level.index_select(0, pairs.loc_idx)
        candidates[objects] = _per_object_level(pairs.gt_idx, level, self.num_objects, L).numpy()
        keys, inverse, per_key = self.count_points(key, totals, lock)
        several = per_key > 1  # per distinct key
        several_keys = keys[several]
        # Each pair's object as an index into its image's boxes (what assign_grid returns).
        local_gt = pairs.gt_idx - self.first_box.index_select(
            0, self.box_image.index_select(0, pairs.gt_idx)
        )
        sizes = torch.bincount(self.box_image, minlength=self.num_images).tolist()
        boxes = [Boxes(b) for b in self.boxes.split(sizes)]
        for i, result in enumerate(results):
            assigner = result.rule.assigner
            matched, chosen = assigner.assign_grid(
                g.centers, g.grid_sizes, g.strides, g.offset, boxes
            )  # (N, R) each, indices into each image's boxes
            if i == 0:  # the tie-break, the same for every rule (same candidates)
                won_pair = chosen.view(-1).index_select(0, key) == local_gt
                won[objects] = torch.bincount(
                    pairs.gt_idx[won_pair], minlength=self.num_objects
                ).numpy()
            # A positive point is a candidate of its box: the pairs whose box it is matched to.
            flat = matched.view(-1)
            pos_pair = flat.index_select(0, key) == local_gt
            result.per_level[objects] = _per_object_level(
                pairs.gt_idx[pos_pair], level[pos_pair], self.num_objects, L
            ).numpy()
            passes = torch.zeros(keys.shape[0], dtype=torch.bool)
            passes[inverse[assigner.rule(pairs.ltrb)]] = True
            positive = flat.index_select(0, several_keys) >= 0
            lost = ~positive & passes[several]
            found = [int(positive.sum()), int(lost.sum()), int((~positive & ~lost).sum())]
            with lock:
                for name, value in zip(("positive", "lost_to_tie_break", "no_box_passes"), found):
                    result.overlaps[name] += value


class _AutoAssignBatch(_BatchBase):
    def run(self, results, objects, candidates, won, totals, lock) -> None:
        from autoassign.loss import center_offsets

        pairs, key = self.pairs()  # as AutoAssign.forward_training
        level = self.grid.level.index_select(0, pairs.loc_idx)
        candidates[objects] = _per_object_level(
            pairs.gt_idx, level, self.num_objects, self.num_levels
        ).numpy()
        self.count_points(key, totals, lock)
        offsets = center_offsets(pairs)
        pair_classes = self.classes.index_select(0, pairs.gt_idx)
        for result in results:
            weight = result.rule.center_prior(offsets, pair_classes).double()
            total = torch.zeros(self.num_objects, dtype=torch.float64)
            total.index_add_(0, pairs.gt_idx, weight)
            squares = torch.zeros_like(total).index_add_(0, pairs.gt_idx, weight * weight)
            effective = torch.where(squares > 0, total * total / squares.clamp(min=1e-300), 0.0)
            result.effective[objects] = effective.numpy()
