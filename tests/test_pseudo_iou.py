"""Unit tests of the Pseudo-IoU detector: the metric, label assignment, losses, inference, config.

Expected values are computed by hand (comments give the arithmetic) or by independent scalar
references written here from the paper and the release (Algorithm 1; FCOS rules of the release's
``PIOUHead._get_target_single``; focal/GIoU/IoU formulas).
"""
import math
import random
from unittest import mock

import pytest
import torch
from torchvision.ops import box_iou

from anchor_free.meta_arch import build_point_generator
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage
from pseudo_iou import PointAssigner, PseudoIoU, pairwise_pseudo_iou, pseudo_iou
from pseudo_iou.assignment import centerness, size_ranges_from_sizes
from pseudo_iou.testing import tiny_pseudo_iou_cfg

from common import gt_instances


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------ references
def algorithm1(l_b: float, r_b: float, t_b: float, b_b: float) -> float:
    """Paper Algorithm 1, literally (scalar)."""
    l_a = r_a = (l_b + r_b) / 2
    t_a = b_a = (t_b + b_b) / 2
    s_b = (l_b + r_b) * (t_b + b_b)
    s_a = (l_a + r_a) * (t_a + b_a)
    l_s, r_s, t_s, b_s = min(l_a, l_b), min(r_a, r_b), min(t_a, t_b), min(b_a, b_b)
    s_i = (l_s + r_s) * (t_s + b_s)
    return s_i / (s_a + s_b - s_i)


def closed_form(u: float, v: float) -> float:
    q = (1 - u) * (1 - v)
    return q / (2 - q)


def reference_assign(points, levels, boxes, ranges, rule, inclusive=False, thresh=0.4):
    """FCOS rules + rule filter with Python loops over points and boxes (as the release's
    ``PIOUHead.loss`` loops over positives)."""
    out = []
    for (x, y), level in zip(points, levels):
        cands = []
        for g, (x0, y0, x1, y1) in enumerate(boxes):
            l, t, r, b = x - x0, y - y0, x1 - x, y1 - y
            if min(l, t, r, b) <= 0:
                continue
            low, high = ranges[level]
            if not low <= max(l, t, r, b) <= high:
                continue
            cands.append(((x1 - x0) * (y1 - y0), g, (l, t, r, b)))
        if not cands:
            out.append(-1)
            continue
        _, g, (l, t, r, b) = min(cands, key=lambda c: (c[0], c[1]))
        if rule == "pseudo_iou":
            value = algorithm1(l, r, t, b)
        elif rule == "centerness":
            value = math.sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))
        else:
            value = 1.0
            thresh = 0.0
        keep = value >= thresh if inclusive else value > thresh
        out.append(g if keep else -1)
    return out


def points_of(strides, sizes):
    """Point centres per level from the detector's own point generator (cell centres)."""
    generator = build_point_generator(strides, 0.5)
    feats = [torch.zeros(1, 1, h, w) for h, w in sizes]
    return generator(feats)


# ------------------------------------------------------------------------------ the metric
@pytest.mark.parametrize(
    "ltrb,expected",
    [
        # centre of the box: q = 1 -> 1
        ((10.0, 5.0, 10.0, 5.0), 1.0),
        # dx = W/4 (u = 0.25), centre row: q = 0.75 -> 0.75 / 1.25 = 0.6
        ((5.0, 10.0, 15.0, 10.0), 0.6),
        # u = 0, |dy| = H/3: q = 2/3 -> (2/3) / (4/3) = 0.5
        ((8.0, 4.0, 8.0, 20.0), 0.5),
        # u = 0.4, v = 1/3: q = 0.6 * 2/3 = 0.4 -> 0.4 / 1.6 = 0.25
        ((2.0, 4.0, 18.0, 20.0), 0.25),
        # u = v = 0.25: q = 0.5625 -> 0.5625 / 1.4375 = 0.391304...
        ((4.0, 2.0, 12.0, 6.0), 0.5625 / 1.4375),
        # on the left side (u = 0.5), centre row: q = 0.5 -> 1/3
        ((0.0, 3.0, 6.0, 3.0), 1.0 / 3.0),
    ],
)
def test_pseudo_iou_hand_values(ltrb, expected):
    value = pseudo_iou(torch.tensor(ltrb, dtype=torch.float64))
    assert value.item() == pytest.approx(expected, abs=1e-12)
    assert algorithm1(ltrb[0], ltrb[2], ltrb[1], ltrb[3]) == pytest.approx(expected, abs=1e-12)


def test_pseudo_iou_closed_form_random_points_inside():
    gen = torch.Generator().manual_seed(0)
    wh = torch.rand(500, 2, generator=gen, dtype=torch.float64) * 100 + 1
    frac = torch.rand(500, 2, generator=gen, dtype=torch.float64)  # position inside the box
    left, top = frac[:, 0] * wh[:, 0], frac[:, 1] * wh[:, 1]
    ltrb = torch.stack([left, top, wh[:, 0] - left, wh[:, 1] - top], dim=1)
    u = (frac[:, 0] - 0.5).abs()  # |dx| / W
    v = (frac[:, 1] - 0.5).abs()
    q = (1 - u) * (1 - v)
    torch.testing.assert_close(pseudo_iou(ltrb), q / (2 - q), rtol=0, atol=1e-12)


def test_pseudo_iou_paper_figure1_example():
    """Fig. 1 of the paper gives only the value (0.57), no coordinates. A point offset from the
    centre by 15% of the width and 15% of the height, e.g. box 100 x 60 with l=35, r=65, t=21,
    b=39: q = 0.85^2 = 0.7225, Pseudo-IoU = 0.7225 / 1.2775 = 0.5656 -> 0.57."""
    value = pseudo_iou(torch.tensor([35.0, 21.0, 65.0, 39.0])).item()
    assert round(value, 2) == 0.57
    assert value == pytest.approx(algorithm1(35, 65, 21, 39), rel=1e-6)
    assert value == pytest.approx(closed_form(0.15, 0.15), rel=1e-6)


def test_pairwise_pseudo_iou_is_iou_of_the_pseudo_box_everywhere():
    """Independent reference: the IoU (torchvision) between each gt box and the explicit box of
    the same size centred on the point, for points inside and outside the boxes."""
    gen = torch.Generator().manual_seed(1)
    xy0 = torch.rand(6, 2, generator=gen, dtype=torch.float64) * 50
    boxes = torch.cat([xy0, xy0 + 5 + torch.rand(6, 2, generator=gen, dtype=torch.float64) * 40], 1)
    points = torch.rand(200, 2, generator=gen, dtype=torch.float64) * 100 - 10
    wh = boxes[:, 2:] - boxes[:, :2]  # (G, 2)
    values = pairwise_pseudo_iou(points, Boxes(boxes))  # (R, G)
    for g in range(len(boxes)):
        pseudo = torch.cat([points - wh[g] / 2, points + wh[g] / 2], dim=1)
        torch.testing.assert_close(values[:, g], box_iou(pseudo, boxes[g : g + 1])[:, 0])


def test_pseudo_iou_degenerate_boxes_give_zero_not_nan():
    ltrb = torch.tensor([[0.0, 1.0, 0.0, 3.0], [2.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert pseudo_iou(ltrb).tolist() == [0.0, 0.0, 0.0]
    assert centerness(ltrb).isfinite().all()


# ------------------------------------------------------------------------------ assignment
# Scene (64x64 image, P3 stride 8 with 8x8 points at 4+8j, P4 stride 16 with 4x4 points at
# 8+16j, size ranges P3 [-1, 24], P4 [24, inf]):
#   A = [0, 0, 24, 24]   (class 0, area 576): 9 P3 points, Pseudo-IoU centre 1, edge 0.5, corner 2/7
#   B = [16, 0, 64, 64]  (class 1, area 3072): max(l,t,r,b) >= 32 everywhere -> P4 only, 12 points:
#       centre (40, 32): u in {0, 1/3}, v in {1/8, 3/8} -> 0.778 (x=40, y=24/40), 0.4545 (x=40,
#       y=8/56), 0.4118 (x=24/56, y=24/40), 0.2632 (x=24/56, y=8/56)
#   C = [8, 8, 32, 24]   (class 2, area 384): 6 P3 points (x 12/20/28, y 12/20), overlaps A on 4
#       points which go to C (min area); Pseudo-IoU 0.6 at x=20, 1/3 at x=12/28
SCENE_BOXES = [[0.0, 0.0, 24.0, 24.0], [16.0, 0.0, 64.0, 64.0], [8.0, 8.0, 32.0, 24.0]]
A_REST = {(4, 4): 0, (12, 4): 0, (20, 4): 0, (4, 12): 0, (4, 20): 0}
C_ALL = {(x, y): 2 for x in (12, 20, 28) for y in (12, 20)}
B_ALL = {(x, y): 1 for x in (24, 40, 56) for y in (8, 24, 40, 56)}
B_T04 = {p: 1 for p in B_ALL if p[0] == 40 or p[1] in (24, 40)}
B_CORE = {(40, 24): 1, (40, 40): 1}


def run_scene(check_levels=True, **kwargs):
    points = points_of([8, 16], [(8, 8), (4, 4)])
    kwargs.setdefault("size_ranges", size_ranges_from_sizes([24]))
    assigner = PointAssigner(**kwargs)
    centers = Boxes.cat(points).get_centers()
    matched, candidates = assigner(centers, [64, 16], Boxes(torch.tensor(SCENE_BOXES)))
    levels = [0] * 64 + [1] * 16
    got = {}
    for (x, y), level, idx in zip(centers.tolist(), levels, matched.tolist()):
        if idx >= 0:
            got[(int(x), int(y))] = idx
            if check_levels:
                assert (level == 1) == (idx == 1), "B only on P4, A and C only on P3"
    return got, candidates


def test_points_are_cell_centres():
    points = points_of([8, 16], [(2, 3), (1, 1)])
    assert points[0].get_centers().tolist() == [
        [4.0, 4.0],
        [12.0, 4.0],
        [20.0, 4.0],
        [4.0, 12.0],
        [12.0, 12.0],
        [20.0, 12.0],
    ]
    assert points[1].get_centers().tolist() == [[8.0, 8.0]]


@pytest.mark.parametrize(
    "thresh,inclusive,expected",
    [
        (0.0, False, {**A_REST, **C_ALL, **B_ALL}),  # every FCOS positive: 5 + 6 + 12
        (0.4, False, {(12, 4): 0, (4, 12): 0, (20, 12): 2, (20, 20): 2, **B_T04}),
        (0.5, False, {(20, 12): 2, (20, 20): 2, **B_CORE}),  # 0.5 is not > 0.5
        (0.5, True, {(12, 4): 0, (4, 12): 0, (20, 12): 2, (20, 20): 2, **B_CORE}),
        (0.6, False, B_CORE),  # C's 0.6 is not > 0.6 (exact in float32)
        (0.6, True, {(20, 12): 2, (20, 20): 2, **B_CORE}),
    ],
)
def test_assignment_scene_pseudo_iou(thresh, inclusive, expected):
    got, candidates = run_scene(
        assigner="pseudo_iou", pseudo_iou_thresh=thresh, thresh_inclusive=inclusive
    )
    assert got == expected
    assert int((candidates >= 0).sum()) == 23  # FCOS positives before the filter


def test_assignment_scene_all_in_box_is_fcos():
    got, _ = run_scene(assigner="all_in_box")
    assert got == {**A_REST, **C_ALL, **B_ALL}


def test_assignment_scene_centerness():
    # c = sqrt(min/max * min/max): A (12,4),(4,12): sqrt(1 * 4/20) = 0.447; A corners 0.2;
    # C x=20: sqrt(1 * 4/12) = 0.577, x=12/28: sqrt(4/20 * 1/3) = 0.258; B x=40: 0.378 (y=8/56),
    # 0.775 (y=24/40); B x=24/56: sqrt(8/40 * 24/40) = 0.346 < 0.35, or less.
    got, _ = run_scene(assigner="centerness", centerness_thresh=0.35)
    assert got == {
        (12, 4): 0,
        (4, 12): 0,
        (20, 12): 2,
        (20, 20): 2,
        **{(40, y): 1 for y in (8, 24, 40, 56)},
    }


def test_assignment_scene_scaled_box_is_strict():
    # s = 0.6: |dx| < 0.3 W and |dy| < 0.3 H: C (W 24, H 16): x=20 (dx 0), |dy| 4 < 4.8 -> 2 points;
    # A: |dy| 8 >= 7.2 for its edge points; B: |dx| < 14.4 -> x=40, |dy| < 19.2 -> y=24/40.
    got, _ = run_scene(assigner="scaled_box", scaled_box_factor=0.6)
    assert got == {(20, 12): 2, (20, 20): 2, **B_CORE}
    # s = 0.5: C's |dy| = 4 = 0.5 * 16 / 2 is on the scaled border -> not inside (strict <).
    got, _ = run_scene(assigner="scaled_box", scaled_box_factor=0.5)
    assert got == B_CORE


def test_assignment_scene_max_pseudo_iou_tie_break():
    # Points in both A and C: (12,12): A 1.0 vs C 1/3 -> A; (20,12), (20,20): A 0.5 / 2/7 vs C 0.6
    # -> C; (12,20): A 0.5 vs C 1/3 -> A.
    got, _ = run_scene(assigner="all_in_box", tie_break="max_pseudo_iou")
    expected = {**A_REST, **C_ALL, **B_ALL}
    expected.update({(12, 12): 0, (12, 20): 0})
    assert got == expected


def test_assignment_scene_without_scale_ranges():
    got, _ = run_scene(check_levels=False, assigner="all_in_box", size_ranges=None)
    assert got[(8, 8)] == 0  # P4 point inside A now counts (was out of P4's range)
    assert got[(44, 44)] == 1  # P3 point inside B now counts
    assert got[(20, 20)] == 2  # inside A, B and C: smallest area wins


def test_size_ranges_are_inclusive_and_inside_is_strict_by_default():
    # Box [0, 0, 28, 24], P3 range [-1, 24], P4 range [24, inf]. All 9 P3 points inside
    # (x, y in 4/12/20) have max(l,t,r,b) <= 24; the x=4 column has r = 24 exactly (upper end
    # of P3). P4 point (24, 8) has l = 24 exactly (lower end of P4): l,t,r,b = 24, 8, 4, 16.
    # P4 point (8, 8): max = 20 < 24, not a P4 positive.
    points = points_of([8, 16], [(8, 8), (4, 4)])
    centers = Boxes.cat(points).get_centers()
    assigner = PointAssigner(assigner="all_in_box", size_ranges=size_ranges_from_sizes([24]))
    matched, _ = assigner(centers, [64, 16], Boxes(torch.tensor([[0.0, 0.0, 28.0, 24.0]])))
    pos = {tuple(int(c) for c in centers[i].tolist()) for i in (matched >= 0).nonzero()[:, 0]}
    assert pos == {(x, y) for x in (4, 12, 20) for y in (4, 12, 20)} | {(24, 8)}
    # Border points: box [4, 4, 20, 20], P3 point (4, 12) has l = 0: not inside unless
    # inside_strict is False.
    box = Boxes(torch.tensor([[4.0, 4.0, 20.0, 20.0]]))
    strict = PointAssigner(assigner="all_in_box", size_ranges=None)
    loose = PointAssigner(assigner="all_in_box", size_ranges=None, inside_strict=False)
    idx = 8 + 0  # (4, 12): row 1, column 0 of P3
    assert centers[idx].tolist() == [4.0, 12.0]
    assert strict(centers, [64, 16], box)[0][idx] == -1
    assert loose(centers, [64, 16], box)[0][idx] == 0


@pytest.mark.parametrize("rule", ["pseudo_iou", "centerness", "all_in_box"])
@pytest.mark.parametrize("inclusive", [False, True])
def test_assignment_matches_loop_reference_on_random_scenes(rule, inclusive):
    rng = random.Random(3)
    points = points_of([8, 16, 32], [(16, 16), (8, 8), (4, 4)])
    centers = Boxes.cat(points).get_centers().double()
    levels = [0] * 256 + [1] * 64 + [2] * 16
    sizes = [20, 48]
    for _ in range(5):
        boxes = []
        for _ in range(rng.randint(1, 12)):
            x0, y0 = rng.uniform(-10, 120), rng.uniform(-10, 120)
            boxes.append([x0, y0, x0 + rng.uniform(2, 90), y0 + rng.uniform(2, 90)])
        assigner = PointAssigner(
            assigner=rule,
            pseudo_iou_thresh=0.4,
            centerness_thresh=0.4,
            thresh_inclusive=inclusive,
            size_ranges=size_ranges_from_sizes(sizes),
        )
        matched, _ = assigner(
            centers, [256, 64, 16], Boxes(torch.tensor(boxes, dtype=torch.float64))
        )
        expected = reference_assign(
            centers.tolist(), levels, boxes, size_ranges_from_sizes(sizes), rule, inclusive, 0.4
        )
        assert matched.tolist() == expected


def test_assigner_validates_names_and_ranges():
    with pytest.raises(ValueError, match="MODEL.PSEUDO_IOU.ASSIGNER.*'atss'"):
        PointAssigner(assigner="atss")
    with pytest.raises(ValueError, match="MODEL.PSEUDO_IOU.PSEUDO_IOU_THRESH.*1.5"):
        PointAssigner(pseudo_iou_thresh=1.5)
    with pytest.raises(ValueError, match="MODEL.PSEUDO_IOU.TIE_BREAK"):
        PointAssigner(tie_break="max_iou")
    with pytest.raises(ValueError, match="SCALED_BOX_FACTOR"):
        PointAssigner(scaled_box_factor=0.0)


# ------------------------------------------------------------------------------ model: losses
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_pseudo_iou_cfg(num_classes=3))


def reference_losses(
    points_xy, strides, levels, cls, ltrb, ctr, gt, num_classes, alpha=0.25, gamma=2.0
):
    """Independent loss values (release settings: focal / num_pos, centerness-weighted GIoU /
    sum of centerness targets, centerness BCE / num_pos), scalar loops over points."""
    ranges = size_ranges_from_sizes([64, 128, 256, 512])
    focal, reg, ctr_w, bce, num_pos = 0.0, 0.0, 0.0, 0.0, 0
    for img, inst in enumerate(gt):
        boxes = inst.gt_boxes.tensor.tolist()
        matched = reference_assign(points_xy, levels, boxes, ranges, "pseudo_iou", False, 0.4)
        for r, ((x, y), g) in enumerate(zip(points_xy, matched)):
            label = int(inst.gt_classes[g]) if g >= 0 else -1
            for k in range(num_classes):
                z = float(cls[img, r, k])
                p = 1 / (1 + math.exp(-z))
                target = 1.0 if k == label else 0.0
                ce = -(target * math.log(p) + (1 - target) * math.log(1 - p))
                p_t = p * target + (1 - p) * (1 - target)
                a_t = alpha * target + (1 - alpha) * (1 - target)
                focal += a_t * (1 - p_t) ** gamma * ce
            if g < 0:
                continue
            num_pos += 1
            s = strides[levels[r]]
            pl, pt, pr, pb = (float(v) * s for v in ltrb[img, r])
            pred = (x - pl, y - pt, x + pr, y + pb)
            x0, y0, x1, y1 = boxes[g]
            ix = max(0.0, min(pred[2], x1) - max(pred[0], x0))
            iy = max(0.0, min(pred[3], y1) - max(pred[1], y0))
            inter = ix * iy
            union = (pred[2] - pred[0]) * (pred[3] - pred[1]) + (x1 - x0) * (y1 - y0) - inter
            iou = inter / (union + 1e-6)
            enclose = (max(pred[2], x1) - min(pred[0], x0)) * (max(pred[3], y1) - min(pred[1], y0))
            giou = iou - (enclose - union) / (enclose + 1e-6)
            l, t, r_, b = x - x0, y - y0, x1 - x, y1 - y
            c = math.sqrt(min(l, r_) / max(l, r_) * min(t, b) / max(t, b))
            reg += c * (1 - giou)
            ctr_w += c
            q = 1 / (1 + math.exp(-float(ctr[img, r])))
            bce += -(c * math.log(q) + (1 - c) * math.log(1 - q))
    n = max(num_pos, 1)
    return {
        "loss_cls": focal / n,
        "loss_box_reg": reg / max(ctr_w, 1e-6),
        "loss_centerness": bce / n,
    }, num_pos


@pytest.mark.parametrize("num_boxes", [0, 1, 8])
def test_losses_match_independent_reference(model, num_boxes):
    rng = random.Random(num_boxes)
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]  # a 64x64 input
    points = model.point_generator([torch.zeros(1, 1, h, w) for h, w in sizes])
    num_points = [len(p) for p in points]
    gt = []
    for _ in range(2):
        boxes = []
        for _ in range(num_boxes):
            x0, y0 = rng.uniform(0, 50), rng.uniform(0, 50)
            boxes.append(
                [x0, y0, min(64.0, x0 + rng.uniform(4, 60)), min(64.0, y0 + rng.uniform(4, 60))]
            )
        gt.append(gt_instances(boxes, [rng.randrange(3) for _ in boxes]))
    gen = torch.Generator().manual_seed(num_boxes)
    cls = torch.randn(2, sum(num_points), 3, generator=gen) * 2 - 2
    ltrb = torch.rand(2, sum(num_points), 4, generator=gen) * 3
    ctr = torch.randn(2, sum(num_points), 1, generator=gen)
    split = lambda t: list(t.split(num_points, dim=1))  # noqa: E731
    targets = model.label_points(points, gt, sizes)
    losses = model.losses(points, split(cls), split(ltrb), split(ctr), targets)

    levels = [lvl for lvl, n in enumerate(num_points) for _ in range(n)]
    expected, num_pos = reference_losses(
        Boxes.cat(points).get_centers().tolist(),
        [8, 16, 32, 64, 128],
        levels,
        cls,
        ltrb,
        ctr[..., 0],
        gt,
        3,
    )
    assert (num_pos > 0) == (num_boxes > 0)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_centerness"}
    for key, value in expected.items():
        assert losses[key].item() == pytest.approx(value, rel=1e-4, abs=1e-6), key
    if num_boxes == 0:
        assert losses["loss_box_reg"].item() == 0.0 and losses["loss_centerness"].item() == 0.0


def test_paper_losses_iou_and_plain_normaliser(model):
    """REG_LOSS iou, not centerness-weighted: sum(-log IoU) / num_pos, checked by hand.
    One level-P3 positive at (4, 4) for box [0, 0, 8, 8] (l=t=r=b=4 px = 0.5 stride units);
    predicted ltrb (0.25, 0.5, 0.5, 0.5) strides -> box 6 x 8 inside the 8 x 8 gt:
    IoU = 48 / 64 = 0.75 -> loss = -log(0.75)."""
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    points = model.point_generator([torch.zeros(1, 1, h, w) for h, w in sizes])
    num_points = [len(p) for p in points]
    gt = [gt_instances([[0.0, 0.0, 8.0, 8.0]], [1])]
    targets = model.label_points(points, gt, sizes)
    assert targets.matched_idxs.sum().item() == -(sum(num_points) - 1)  # exactly one positive
    ltrb = torch.zeros(1, sum(num_points), 4)
    ltrb[0, 0] = torch.tensor([0.25, 0.5, 0.5, 0.5])
    split = lambda t: list(t.split(num_points, dim=1))  # noqa: E731
    with mock.patch.multiple(model, reg_loss_type="iou", centerness_weighted_reg_loss=False):
        losses = model.losses(
            points, split(torch.zeros(1, sum(num_points), 3)), split(ltrb), None, targets
        )
    assert losses["loss_box_reg"].item() == pytest.approx(-math.log(0.75), rel=1e-6)
    assert "loss_centerness" not in losses


def test_initial_losses_match_the_init_derived_values(model):
    """Derived from the init (prior 0.01, near-zero regression and centerness outputs): per
    positive 0.25 * 0.99^2 * ln(100) = 1.1282 of focal loss (plus the negatives' tiny share),
    centerness BCE ln 2, GIoU loss ~1."""
    image = torch.rand(3, 64, 64) * 255
    batch = [{"image": image, "instances": gt_instances([[4.0, 6.0, 40.0, 50.0]], [1])}]
    with EventStorage() as storage:
        losses = model(batch)
        num_pos = storage.latest()["pseudo_iou/num_pos_per_image"][0]
    num_points = 64 + 16 + 4 + 1 + 1
    negatives = (num_points * 3 - num_pos) * 0.75 * 0.01 ** 2 * -math.log(0.99) / num_pos
    assert losses["loss_cls"].item() == pytest.approx(
        0.25 * 0.99 ** 2 * math.log(100) + negatives, rel=0.02
    )
    assert losses["loss_centerness"].item() == pytest.approx(math.log(2), rel=0.01)
    assert losses["loss_box_reg"].item() == pytest.approx(1.0, abs=0.02)


def test_training_forward_gradients_reach_every_head_parameter(model):
    torch.manual_seed(0)
    image = torch.rand(3, 64, 64) * 255
    model.train()
    for gt in ([[4.0, 6.0, 40.0, 50.0]], []):
        model.zero_grad()
        batch = [{"image": image, "instances": gt_instances(gt, [2] * len(gt))}]
        with EventStorage() as storage:
            losses = model(batch)
            sum(losses.values()).backward()
            logged = storage.latest()
        assert all(torch.isfinite(v) for v in losses.values())
        for name, param in model.head.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
        if gt:
            assert model.head.bbox_pred.weight.grad.abs().sum() > 0
            assert model.head.quality.weight.grad.abs().sum() > 0
            assert logged["pseudo_iou/num_pos_per_image"][0] > 0
            assert logged["pseudo_iou/num_objects_without_pos"][0] == 0
        else:
            assert losses["loss_box_reg"].item() == 0.0
            assert logged["pseudo_iou/num_pos_per_image"][0] == 0


def test_assignment_statistics_logged(model):
    """Scene: box [0,0,24,24] -> P3 positives (12,4),(4,12),(12,12),(20,12),(12,20) at T=0.4
    (centre 1, edge centres 0.5); a 2x2 px box between points -> no positive."""
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    points = model.point_generator([torch.zeros(1, 1, h, w) for h, w in sizes])
    gt = [gt_instances([[0.0, 0.0, 24.0, 24.0], [33.0, 33.0, 35.0, 35.0]], [0, 1]), gt_instances([], [])]
    targets = model.label_points(points, gt, sizes)
    with EventStorage() as storage:
        model._log_assignment(targets, [len(p) for p in points], gt)
        logged = {k: v[0] for k, v in storage.latest().items()}
    assert logged["pseudo_iou/num_pos_per_image"] == 2.5  # 5 positives / 2 images
    assert logged["pseudo_iou/num_fcos_pos_per_image"] == 4.5  # 9 in-box P3 points / 2
    assert logged["pseudo_iou/num_pos_p3"] == 2.5 and logged["pseudo_iou/num_pos_p4"] == 0
    assert logged["pseudo_iou/num_pos_per_object"] == 2.5  # 5 positives / 2 objects
    assert logged["pseudo_iou/num_objects_without_pos"] == 1


def test_non_finite_box_predictions_give_a_nan_loss_not_a_host_check(model):
    """A diverged prediction shows as a NaN box loss (Detectron2's trainer raises
    FloatingPointError on it), not as fvcore's 'bad box' assertion or a per-iteration host
    check; the other losses stay finite."""
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    points = model.point_generator([torch.zeros(1, 1, h, w) for h, w in sizes])
    num_points = [len(p) for p in points]
    targets = model.label_points(points, [gt_instances([[0.0, 0.0, 8.0, 8.0]], [1])], sizes)
    ltrb = torch.full((1, sum(num_points), 4), float("nan"))
    split = lambda t: list(t.split(num_points, dim=1))  # noqa: E731
    losses = model.losses(
        points, split(torch.zeros(1, sum(num_points), 3)), split(ltrb), None, targets
    )
    assert torch.isnan(losses["loss_box_reg"]) and torch.isfinite(losses["loss_cls"])


def test_invalid_gt_box_raises_clear_error(model):
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    points = model.point_generator([torch.zeros(1, 1, h, w) for h, w in sizes])
    gt = [gt_instances([[0.0, 0.0, 8.0, 8.0]], [0]), gt_instances([[10.0, 0.0, 5.0, 8.0]], [0])]
    with pytest.raises(ValueError, match=r"Image 1 .* box #0: \[10.0, 0.0, 5.0, 8.0\]"):
        model.label_points(points, gt, sizes)
    gt = [gt_instances([[0.0, float("nan"), 8.0, 8.0]], [0])]
    with pytest.raises(ValueError, match="Image 0"):
        model.label_points(points, gt, sizes)


# ------------------------------------------------------------------------------ inference
def logit(p):
    return math.log(p / (1 - p))


def test_inference_scores_threshold_class_then_multiply(model):
    cls = torch.tensor([[logit(0.9), logit(0.06)], [logit(0.04), logit(0.5)]])
    ctr = torch.tensor([[logit(0.5)], [logit(0.999)]])
    scores = model.inference_scores(cls, ctr)
    # 0.9*0.5 kept; 0.06*0.5 = 0.03 < 0.05 kept (threshold is on the class score, no sqrt);
    # 0.04 dropped although 0.04 * 0.999 would tie with nothing; 0.5*0.999 kept.
    torch.testing.assert_close(scores, torch.tensor([[0.45, 0.03], [0.0, 0.4995]]))
    torch.testing.assert_close(
        model.inference_scores(cls, None), torch.tensor([[0.9, 0.06], [0.0, 0.5]])
    )


def test_forward_inference_fields_order_nms_cap_and_no_assignment(model):
    """Hand-built head outputs on a 64x64 image. P3 points (4+8j, 4+8i); every point regresses
    a 16x16 box (ltrb 1 stride) centred on it. Class 0 at points (12,12) 0.9 and (20,12) 0.8:
    IoU of the two boxes = 8*16/(2*256-128) = 1/3 -> both kept at NMS 0.5, only the first at
    NMS 0.3. Class 1 at (12,12) 0.7 (other class: never suppressed by class 0), class 1 at
    (44,44) cls 0.06, ctr 0.5 -> score 0.03 kept, class 0 at (52,52) cls 0.04 dropped."""
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    features = [torch.zeros(1, 1, h, w) for h, w in sizes]
    neg = logit(1e-4)
    cls = [torch.full((1, 3, h, w), neg) for h, w in sizes]
    ltrb = [torch.ones(1, 4, h, w) for h, w in sizes]
    ctr = [torch.full((1, 1, h, w), 20.0) for h, w in sizes]  # sigmoid ~ 1
    cls[0][0, 0, 1, 1] = logit(0.9)
    cls[0][0, 0, 1, 2] = logit(0.8)
    cls[0][0, 1, 1, 1] = logit(0.7)
    cls[0][0, 1, 5, 5] = logit(0.06)
    ctr[0][0, 0, 5, 5] = 0.0
    cls[0][0, 0, 6, 6] = logit(0.04)
    images = mock.Mock(image_sizes=[(64, 64)])
    with mock.patch.object(
        PseudoIoU, "label_points", side_effect=AssertionError("assignment ran")
    ), mock.patch.object(PointAssigner, "__call__", side_effect=AssertionError("assigner ran")):
        result = model.forward_inference(images, features, (cls, ltrb, ctr))[0]
        assert set(result.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        torch.testing.assert_close(
            result.scores, torch.tensor([0.9, 0.8, 0.7, 0.03]), atol=1e-6, rtol=0
        )
        assert result.pred_classes.tolist() == [0, 0, 1, 1]
        torch.testing.assert_close(
            result.pred_boxes.tensor,
            torch.tensor(
                [
                    [4.0, 4.0, 20.0, 20.0],
                    [12.0, 4.0, 28.0, 20.0],
                    [4.0, 4.0, 20.0, 20.0],
                    [36.0, 36.0, 52.0, 52.0],
                ]
            ),
        )
        with mock.patch.multiple(model, test_nms_thresh=0.3, max_detections_per_image=2):
            result = model.forward_inference(images, features, (cls, ltrb, ctr))[0]
        assert result.scores.tolist() == pytest.approx([0.9, 0.7], abs=1e-6)
        assert result.pred_classes.tolist() == [0, 1]


def test_eval_forward_end_to_end(model):
    model.eval()
    with torch.no_grad(), mock.patch.object(PseudoIoU, "label_points", side_effect=AssertionError):
        out = model([{"image": torch.rand(3, 64, 64) * 255, "height": 128, "width": 128}])
    model.train()
    inst = out[0]["instances"]
    assert inst.image_size == (128, 128)
    assert len(inst) <= 100
    assert (inst.scores[:-1] >= inst.scores[1:]).all()


# ------------------------------------------------------------------------------ config
def test_config_validation_errors_name_key_and_value():
    for key, value, pattern in [
        ("ASSIGNER", "atss", "MODEL.PSEUDO_IOU.ASSIGNER.*'atss'"),
        ("PSEUDO_IOU_THRESH", -0.1, "MODEL.PSEUDO_IOU.PSEUDO_IOU_THRESH.*-0.1"),
        ("REG_LOSS", "smooth_l1", "MODEL.PSEUDO_IOU.REG_LOSS.*'smooth_l1'"),
        ("SIZES_OF_INTEREST", [64, 128],
         r"MODEL.PSEUDO_IOU.SIZES_OF_INTEREST \(Python config: .*\) = \[64, 128\] needs one"),
        ("SCORE_THRESH_TEST", 1.0, "MODEL.PSEUDO_IOU.SCORE_THRESH_TEST.*1.0"),
        ("IN_FEATURES", ["p3", "p4", "p9"], "p9"),
        ("CENTERNESS_THRESH", 2.0, "MODEL.PSEUDO_IOU.CENTERNESS_THRESH.*2.0"),
    ]:
        cfg = tiny_pseudo_iou_cfg()
        cfg.MODEL.PSEUDO_IOU[key] = value
        if key == "IN_FEATURES":
            cfg.MODEL.PSEUDO_IOU.SIZES_OF_INTEREST = [64, 128]
        with pytest.raises(ValueError, match=pattern):
            build_model(cfg)


def test_defaults_are_the_released_model():
    cfg = tiny_pseudo_iou_cfg()
    model = build_model(cfg)
    assert model.assigner == PointAssigner(
        assigner="pseudo_iou",
        pseudo_iou_thresh=0.4,
        thresh_inclusive=False,
        size_ranges=(
            (-1.0, 64.0),
            (64.0, 128.0),
            (128.0, 256.0),
            (256.0, 512.0),
            (512.0, float("inf")),
        ),
        tie_break="min_area",
        inside_strict=True,
        centerness_thresh=0.35,
        scaled_box_factor=0.6,
    )
    assert model.reg_loss_type == "giou" and model.centerness_weighted_reg_loss
    assert model.head.quality is not None
    assert all(not isinstance(m, torch.nn.Conv2d) or m.bias is None for m in model.head.cls_tower)
    assert model.head.cls_score.bias[0].item() == pytest.approx(-math.log(99), rel=1e-6)
    assert [float(o) for o in [model.point_generator.offset]] == [0.5]
    assert model.test_score_thresh == 0.05 and model.test_nms_thresh == 0.5
    assert model.test_topk_candidates == 1000 and model.max_detections_per_image == 100
