"""Pseudo-IoU's one training path (``PointAssigner.assign_grid``: the whole batch, on the in-box
pairs of ``anchor_free.inbox`` measured from the detector's own points) against the dense
``PointAssigner.__call__`` on the same points, image by image (itself checked against a scalar
loop reference in test_pseudo_iou.py; the previous sparse path was checked equal to it too), and
its use by the detector's training forward.

Equality is exact (``torch.equal`` on matched and candidate indices) on seeded random scenes
built to hit the corner cases: boxes whose sides pass through grid points (strict inside),
duplicated boxes and equal-area boxes (min-area ties), boxes mirrored around a point (equal
Pseudo-IoU ties), boxes partly outside the image, tiny boxes containing no point, no boxes.
"""
import random
from unittest import mock

import pytest
import torch

import pseudo_iou.assignment as assignment_module
from anchor_free.inbox import grid_points, inbox_pairs
from anchor_free.meta_arch import build_point_generator
from detectron2.modeling import build_model
from detectron2.structures import Boxes, pairwise_point_box_distance
from detectron2.utils.events import EventStorage
from pseudo_iou import PointAssigner
from pseudo_iou.assignment import pseudo_iou, size_ranges_from_sizes
from pseudo_iou.testing import tiny_pseudo_iou_cfg

from common import gt_instances

STRIDES = [8, 16, 32]
IMAGE_H, IMAGE_W = 100, 130
GRID = [(-(-IMAGE_H // s), -(-IMAGE_W // s)) for s in STRIDES]  # (13, 17), (7, 9), (4, 5)
SIZES_OF_INTEREST = [16, 48]

RULES = [
    dict(assigner="all_in_box"),
    dict(assigner="pseudo_iou", pseudo_iou_thresh=0.4, thresh_inclusive=False),
    dict(assigner="pseudo_iou", pseudo_iou_thresh=0.5, thresh_inclusive=True),
    dict(assigner="centerness", centerness_thresh=0.35, thresh_inclusive=False),
    dict(assigner="centerness", centerness_thresh=0.5, thresh_inclusive=True),
    dict(assigner="scaled_box", scaled_box_factor=0.6),
]
RULE_IDS = ["all_in_box", "piou_gt", "piou_ge", "ctr_gt", "ctr_ge", "scaled_box"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dense(assigner, boxes, offset, grid=GRID, strides=STRIDES, points=None):
    if points is None:
        points = grid_points(grid, strides, offset, dtype=boxes.dtype)
    return assigner(points, [h * w for h, w in grid], Boxes(boxes))


def sparse(assigner, boxes_per_image, offset, grid=GRID, strides=STRIDES, points=None):
    """assign_grid on a batch; returns (N, R) matched and candidates."""
    if points is None:
        points = grid_points(grid, strides, offset, dtype=boxes_per_image[0].dtype)
    return assigner.assign_grid(points, grid, strides, offset, [Boxes(b) for b in boxes_per_image])


def sparse1(assigner, boxes, offset, grid=GRID, strides=STRIDES):
    """assign_grid on one image; returns (R,) matched and candidates."""
    matched, candidates = sparse(assigner, [boxes], offset, grid, strides)
    return matched[0], candidates[0]


def random_scene(seed: int, offset: float, dtype=torch.float32) -> torch.Tensor:
    """(G, 4) boxes mixing every corner case; seed % 7 == 0 gives an empty scene."""
    rng = random.Random(seed)
    if seed % 7 == 0:
        return torch.zeros((0, 4), dtype=dtype)
    boxes = []
    # Grid-point coordinates of the finest level (also on coarser levels' points for some).
    snap = lambda v: (round(v / 4) * 4 if offset == 0.5 else round(v / 8) * 8)  # noqa: E731
    for _ in range(rng.randint(1, 8)):  # continuous, partly outside the image
        x0, y0 = rng.uniform(-40, IMAGE_W), rng.uniform(-40, IMAGE_H)
        boxes.append([x0, y0, x0 + rng.uniform(1, 110), y0 + rng.uniform(1, 90)])
    for _ in range(rng.randint(1, 6)):  # sides exactly on grid points: strict edges
        x0, y0 = snap(rng.uniform(-20, IMAGE_W)), snap(rng.uniform(-20, IMAGE_H))
        boxes.append([x0, y0, x0 + snap(rng.uniform(8, 100)), y0 + snap(rng.uniform(8, 80))])
    for _ in range(rng.randint(0, 3)):  # tiny boxes between points
        x0 = (rng.randrange(GRID[0][1]) + offset) * 8 + 1
        y0 = (rng.randrange(GRID[0][0]) + offset) * 8 + 1
        boxes.append([x0, y0, x0 + rng.uniform(0.5, 6), y0 + rng.uniform(0.5, 6)])
    for _ in range(rng.randint(1, 3)):  # mirror pairs around a point: equal Pseudo-IoU
        cx = (rng.randrange(GRID[0][1]) + offset) * 8
        cy = (rng.randrange(GRID[0][0]) + offset) * 8
        w, h, d = rng.uniform(10, 60), rng.uniform(10, 60), rng.uniform(0, 4)
        boxes.append([cx + d - w / 2, cy - h / 2, cx + d + w / 2, cy + h / 2])
        boxes.append([cx - d - w / 2, cy - h / 2, cx - d + w / 2, cy + h / 2])
    for _ in range(rng.randint(1, 3)):  # equal areas: a translated copy (by whole cells)
        box = boxes[rng.randrange(len(boxes))]
        dx, dy = 8 * rng.randint(-2, 2), 8 * rng.randint(-2, 2)
        boxes.append([box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy])
    boxes += [boxes[rng.randrange(len(boxes))] for _ in range(rng.randint(1, 3))]  # duplicates
    rng.shuffle(boxes)
    return torch.tensor(boxes, dtype=dtype)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
@pytest.mark.parametrize("tie_break", ["min_area", "max_pseudo_iou"])
@pytest.mark.parametrize("use_ranges", [True, False], ids=["ranges", "no_ranges"])
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "sides"])
def test_assign_grid_equals_dense_on_random_scenes(rule, tie_break, use_ranges, strict):
    """Batches of 3 images (one call) against the dense assignment of each image."""
    ranges = size_ranges_from_sizes(SIZES_OF_INTEREST) if use_ranges else None
    assigner = PointAssigner(tie_break=tie_break, size_ranges=ranges, inside_strict=strict, **rule)
    num_points = sum(h * w for h, w in GRID)
    for seed in range(0, 14, 3):
        offset = 0.5 if seed % 2 == 0 else 0.0
        dtype = torch.float64 if seed % 5 == 4 else torch.float32
        scenes = [random_scene(seed + k, offset, dtype) for k in range(3)]
        with mock.patch.object(PointAssigner, "__call__", side_effect=AssertionError("dense")):
            matched, candidates = sparse(assigner, scenes, offset)
        assert matched.dtype == candidates.dtype == torch.long
        assert matched.shape == candidates.shape == (3, num_points)
        for img, boxes in enumerate(scenes):
            expected_matched, expected_candidates = dense(assigner, boxes, offset)
            assert torch.equal(candidates[img], expected_candidates), (seed, img)
            assert torch.equal(matched[img], expected_matched), (seed, img)


def test_random_scenes_exercise_the_corner_cases():
    """The scenes above do contain what they are meant to test (else equality proves little)."""
    counts = dict(edge=0, area_tie=0, piou_tie=0, outside=0, no_point=0, empty=0, cand=0, pos=0)
    base = PointAssigner(size_ranges=None)
    for seed in range(14):
        offset = 0.5 if seed % 2 == 0 else 0.0
        boxes = random_scene(seed, offset)
        if len(boxes) == 0:
            counts["empty"] += 1
            continue
        points = grid_points(GRID, STRIDES, offset)
        ltrb = pairwise_point_box_distance(points, Boxes(boxes))  # (R, G, 4)
        inside = ltrb.min(dim=2).values > 0
        counts["edge"] += int(((ltrb.min(dim=2).values == 0) & (ltrb.max(dim=2).values > 0)).sum())
        area = torch.where(inside, Boxes(boxes).area()[None], torch.tensor(float("inf")))
        best = area.min(dim=1, keepdim=True).values
        counts["area_tie"] += int((((area == best) & inside).sum(dim=1) >= 2).sum())
        piou = torch.where(inside, pseudo_iou(ltrb), torch.tensor(-1.0))
        best = piou.max(dim=1, keepdim=True).values
        counts["piou_tie"] += int((((piou == best) & inside).sum(dim=1) >= 2).sum())
        counts["outside"] += int(((boxes[:, :2] < 0) | (boxes[:, 2:] > 130)).any(dim=1).sum())
        counts["no_point"] += int((inside.sum(dim=0) == 0).sum())
        matched, candidates = sparse1(base, boxes, offset)
        counts["cand"] += int((candidates >= 0).sum())
        counts["pos"] += int((matched >= 0).sum())
    assert all(v > 0 for v in counts.values()), counts
    assert counts["pos"] < counts["cand"], counts  # the Pseudo-IoU rule removes some


def test_points_of_another_offset_are_used_as_given():
    """Detectron2's generator rounds (j * s + 0.7 * s) differently from (j + 0.7) * s: the
    assignment measures from the given points (one source of truth), so it equals the dense
    assignment on exactly those points."""
    feats = [torch.zeros(1, 1, h, w) for h, w in GRID]
    centers = Boxes.cat(build_point_generator(STRIDES, 0.7)(feats)).get_centers()
    assert not torch.equal(centers, grid_points(GRID, STRIDES, 0.7))
    assigner = PointAssigner(size_ranges=size_ranges_from_sizes(SIZES_OF_INTEREST))
    scenes = [random_scene(seed, 0.5) for seed in (1, 2, 3)]
    matched, candidates = sparse(assigner, scenes, 0.7, points=centers)
    for img, boxes in enumerate(scenes):
        expected = dense(assigner, boxes, 0.7, points=centers)
        assert torch.equal(matched[img], expected[0]) and torch.equal(candidates[img], expected[1])


def test_level_ranges_skip_the_boxes_that_cannot_match_a_level():
    """A 500-px box has no P3 candidate cell enumerated (its in-box P3 points all have
    max(l, t, r, b) >= 250 > 64), and the pairs kept equal the dense filter."""
    grid, strides = [(100, 100), (50, 50), (25, 25), (13, 13), (7, 7)], [8, 16, 32, 64, 128]
    ranges = torch.tensor(size_ranges_from_sizes([64, 128, 256, 512]), dtype=torch.float32)
    boxes = torch.tensor([[100.0, 100.0, 600.0, 600.0], [10.0, 20.0, 50.0, 44.0]])
    enumerated = []
    real = torch.repeat_interleave

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        enumerated.append(out.shape[0])
        return out

    with mock.patch.object(torch, "repeat_interleave", side_effect=counting):
        pairs = inbox_pairs(boxes, grid, strides, 0.5, level_ranges=ranges)
    unfiltered = inbox_pairs(boxes, grid, strides, 0.5)
    level_ends = torch.cumsum(torch.tensor([h * w for h, w in grid]), 0)
    level = torch.bucketize(unfiltered.loc_idx, level_ends, right=True)
    far = unfiltered.ltrb.max(dim=1).values
    ok = (far >= ranges[level, 0]) & (far <= ranges[level, 1])
    assert torch.equal(pairs.gt_idx, unfiltered.gt_idx[ok])
    assert torch.equal(pairs.loc_idx, unfiltered.loc_idx[ok])
    assert torch.equal(pairs.ltrb, unfiltered.ltrb[ok])
    # The big box: P3 (62 x 62 = 3844 in-box points) is not enumerated at all.
    assert int(((unfiltered.gt_idx == 0) & (level == 0)).sum()) == 62 * 62
    assert enumerated and max(enumerated) < 62 * 62  # candidate cells, all levels


def test_dense_min_and_max_return_the_first_extremal_index():
    """What both tie-breaks of the sparse path reproduce (lowest box index on equal values)."""
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(0, 3, (5000, 64), generator=gen).float()
    first_min = (values == values.min(dim=1, keepdim=True).values).float().argmax(dim=1)
    first_max = (values == values.max(dim=1, keepdim=True).values).float().argmax(dim=1)
    # argmax of a 0/1 row: its first 1 (checked by hand on a small case).
    assert torch.tensor([[0.0, 1.0, 1.0]]).argmax(dim=1).item() == 1
    assert torch.equal(values.min(dim=1).indices, first_min)
    assert torch.equal(values.max(dim=1).indices, first_max)


def test_ties_go_to_the_lowest_box_index():
    """Hand scene, one level of stride 8, offset 0.5 (points at 4 + 8k). Boxes 1 and 2 are the
    same 24x24 box; box 0 is larger. Boxes 3 and 4 are mirror images around the point (52, 52):
    equal Pseudo-IoU there, both of area 16 x 16."""
    boxes = torch.tensor(
        [
            [0.0, 0.0, 40.0, 40.0],
            [2.0, 2.0, 26.0, 26.0],
            [2.0, 2.0, 26.0, 26.0],
            [46.0, 44.0, 62.0, 60.0],
            [42.0, 44.0, 58.0, 60.0],
        ]
    )
    grid, strides = [(8, 8)], [8]
    for tie_break in ("min_area", "max_pseudo_iou"):
        five_levels = size_ranges_from_sizes([64, 128, 256, 512])
        assigner = PointAssigner(tie_break=tie_break, size_ranges=five_levels)
        with pytest.raises(ValueError, match="5 size ranges .* for 1 feature levels"):
            sparse1(assigner, boxes, 0.5, grid, strides)
        assigner = PointAssigner(assigner="all_in_box", tie_break=tie_break, size_ranges=None)
        _, candidates = sparse1(assigner, boxes, 0.5, grid, strides)
        assert torch.equal(candidates, dense(assigner, boxes, 0.5, grid, strides)[1])
        at = lambda x, y: int(candidates[(y - 4) // 8 * 8 + (x - 4) // 8])  # noqa: E731
        assert at(52, 52) == 3  # equal area / equal Pseudo-IoU: the lower index
        assert at(44, 52) == 4 and at(60, 52) == 3  # inside one of them only
        assert at(12, 12) == 1  # in 0, 1, 2: smallest area 1 = 2; Pseudo-IoU 0.47, 0.72, 0.72
        assert at(28, 28) == 0 and at(36, 4) == 0  # in box 0 only
        # (4, 4) in 0, 1, 2: area picks 1; Pseudo-IoU 0.220 (box 0) > 0.205 (boxes 1, 2) picks 0.
        assert at(4, 4) == (1 if tie_break == "min_area" else 0)
        assert at(36, 4) == 0


def test_strict_edges_and_tiny_boxes():
    """Box [4, 4, 28, 20] on stride-8 points at 4 + 8k: the points on its sides (x = 4 or 28,
    y = 4 or 20) are not inside; inside are x in {12, 20}, y = 12. A 3x3 box between points
    contains none."""
    assigner = PointAssigner(assigner="all_in_box", size_ranges=None)
    boxes = torch.tensor([[4.0, 4.0, 28.0, 20.0], [13.0, 21.0, 16.0, 24.0]])
    matched, candidates = sparse1(assigner, boxes, 0.5, [(4, 4)], [8])
    expected = torch.full((16,), -1)
    expected[[5, 6]] = 0  # (12, 12), (20, 12)
    assert torch.equal(candidates, expected) and torch.equal(matched, expected)
    loose = PointAssigner(assigner="all_in_box", size_ranges=None, inside_strict=False)
    matched, _ = sparse1(loose, boxes, 0.5, [(4, 4)], [8])
    assert int((matched == 0).sum()) == 4 * 3  # x in {4..28}, y in {4, 12, 20}


def test_inbox_pairs_lives_in_anchor_free_only():
    import autoassign.loss

    assert not hasattr(autoassign.loss, "inbox_pairs")
    assert not hasattr(autoassign.loss, "location_strides")
    assert assignment_module.inbox_pairs is inbox_pairs


# ------------------------------------------------------------------------------ the detector
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_pseudo_iou_cfg(num_classes=3))


def test_training_forward_uses_the_sparse_assignment(model):
    batch = [
        {"image": torch.rand(3, 64, 64) * 255,
         "instances": gt_instances([[4.0, 6.0, 40.0, 50.0], [8.0, 8.0, 24.0, 24.0]], [1, 2])},
        {"image": torch.rand(3, 64, 64) * 255, "instances": gt_instances([], [])},
    ]
    model.train()
    with mock.patch.object(
        PointAssigner, "__call__", side_effect=AssertionError("dense assignment ran")
    ), mock.patch.object(
        assignment_module, "inbox_pairs", side_effect=inbox_pairs
    ) as sparse_pairs, mock.patch.object(
        PointAssigner, "assign_grid", autospec=True, side_effect=PointAssigner.assign_grid
    ) as grid_call, EventStorage() as storage:
        losses = model(batch)
        num_pos = storage.latest()["pseudo_iou/num_pos_per_image"][0]
    assert grid_call.call_count == 1  # once per batch
    _, points, grid_sizes, strides, offset, boxes = grid_call.call_args_list[0].args
    assert points.shape == (64 + 16 + 4 + 1 + 1, 2)
    assert grid_sizes == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    assert strides == [8, 16, 32, 64, 128] and offset == 0.5 and len(boxes) == 2
    assert sparse_pairs.call_count == 1
    assert num_pos > 0 and all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("seed", range(4))
def test_label_points_equals_the_dense_assignment(model, seed):
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    points = model.point_generator([torch.zeros(1, 1, h, w) for h, w in sizes])
    centers = Boxes.cat(points).get_centers()
    rng = random.Random(seed)
    gt = []
    for _ in range(2):
        boxes = []
        for _ in range(rng.randint(0, 10)):
            x0, y0 = rng.choice([rng.uniform(-8, 60), 8.0 * rng.randint(0, 7)]), rng.uniform(-8, 60)
            boxes.append([x0, y0, x0 + rng.uniform(1, 70), y0 + rng.uniform(1, 70)])
        boxes += boxes[:1]  # a duplicate
        gt.append(gt_instances(boxes, [rng.randrange(3) for _ in boxes]))
    targets = model.label_points(points, gt, sizes)
    for img, inst in enumerate(gt):
        matched, candidates = model.assigner(centers, [len(p) for p in points], inst.gt_boxes)
        assert torch.equal(targets.matched_idxs[img], matched)
        assert torch.equal(targets.candidate_idxs[img], candidates)


def test_label_points_checks_grid_sizes_and_uses_the_given_points(model):
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    feats = [torch.zeros(1, 1, h, w) for h, w in sizes]
    points = model.point_generator(feats)
    gt = [gt_instances([[3.0, 5.0, 40.0, 33.0], [10.0, 10.0, 30.0, 30.0]], [0, 1])]
    with pytest.raises(ValueError, match=r"do not match the feature grids .*\(4, 8\)"):
        model.label_points(points, gt, [(4, 8)] + sizes[1:])
    # Points of another offset (Detectron2 rounds 0.7 * s differently from (j + 0.7) * s): the
    # same sparse path, measuring from the given points; no dense assignment.
    other = build_point_generator(model.strides, 0.7)(feats)
    with mock.patch.object(PointAssigner, "__call__", side_effect=AssertionError("dense")):
        targets = model.label_points(other, gt, sizes)
    centers = Boxes.cat(other).get_centers()
    matched, _ = model.assigner(centers, [len(p) for p in other], gt[0].gt_boxes)
    assert torch.equal(targets.matched_idxs[0], matched)
