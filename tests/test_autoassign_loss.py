"""AutoAssign weighting and losses: hand-computed values, an independent dense reference
(``AutoAssign.losses`` of Megvii-BaseDetection/AutoAssign, auto_assign.res50.fpn.coco.800size.1x/
auto_assign.py, written literally with [G, L] tensors as the release does) against the sparse
implementation, and edge cases. No backbone: the head outputs are leaf tensors."""
import math
from typing import Dict, List, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anchor_free.inbox import inbox_pairs
from anchor_free.meta_arch import build_point_generator
from autoassign import AutoAssign, CenterPrior
from autoassign.loss import center_offsets, negative_box_prob, positive_terms
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import Backbone
from detectron2.structures import Boxes, Instances

from common import gt_instances

# ------------------------------------------------------------------------------------------------
# Helpers: a model without backbone or head, fed leaf tensors as head outputs
# ------------------------------------------------------------------------------------------------


class _NoBackbone(Backbone):
    def __init__(self, strides: List[int]):
        super().__init__()
        self._strides = strides

    def forward(self, x):  # pragma: no cover - never called
        raise AssertionError("the loss tests feed head outputs directly")

    def output_shape(self):
        return {f"p{i}": ShapeSpec(channels=1, stride=s) for i, s in enumerate(self._strides)}


def make_model(num_classes: int, strides: List[int], center_prior: Optional[CenterPrior] = None,
               **kwargs) -> AutoAssign:
    head = nn.Identity()  # the tests feed the head's outputs; AutoAssign checks its branches:
    head.quality = None if kwargs.get("objectness") == "none" else nn.Identity()
    return AutoAssign(
        backbone=_NoBackbone(strides),
        head=head,
        head_in_features=[f"p{i}" for i in range(len(strides))],
        point_generator=build_point_generator(strides, 0.0),
        center_prior=center_prior or CenterPrior(num_classes),
        num_classes=num_classes,
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
        **kwargs,
    )


def make_instances(boxes, classes, image_size=(64, 96)) -> Instances:
    return gt_instances(boxes, classes, image_size)


class Scene:
    """Leaf head outputs for N images on a grid of levels (N, C, H_l, W_l)."""

    def __init__(self, num_images, num_classes, grid_sizes, cls=None, ltrb=None, obj=None,
                 seed=0, with_obj=True):
        g = torch.Generator().manual_seed(seed)
        self.grid_sizes = grid_sizes
        self.cls = [
            (torch.randn(num_images, num_classes, h, w, generator=g) * 2 - 2
             if cls is None else cls(num_images, num_classes, h, w)).requires_grad_()
            for h, w in grid_sizes
        ]
        self.ltrb = [
            (torch.rand(num_images, 4, h, w, generator=g) * 3
             if ltrb is None else ltrb(num_images, h, w)).requires_grad_()
            for h, w in grid_sizes
        ]
        self.obj = None
        if with_obj:
            self.obj = [
                (torch.randn(num_images, 1, h, w, generator=g)
                 if obj is None else obj(num_images, h, w)).requires_grad_()
                for h, w in grid_sizes
            ]
        self.features = [torch.zeros(num_images, 1, h, w) for h, w in grid_sizes]

    def leaves(self) -> List[Tensor]:
        return self.cls + self.ltrb + (self.obj or [])

    def predictions(self):
        return self.cls, self.ltrb, self.obj

    def flat(self, tensors: List[Tensor]) -> Tensor:
        """(N, C, H, W) per level -> (N, L, C)."""
        return torch.cat([t.flatten(2).transpose(1, 2) for t in tensors], dim=1)


def sparse_losses(model: AutoAssign, scene: Scene, gts: List[Instances]) -> Dict[str, Tensor]:
    return model.forward_training(None, scene.features, scene.predictions(), gts)


# ------------------------------------------------------------------------------------------------
# The independent dense reference: the release's AutoAssign.losses literally, [G, L] tensors,
# cvpods GIoU
# ------------------------------------------------------------------------------------------------


def cvpods_giou_loss(pred_ltrb: Tensor, target_ltrb: Tensor) -> Tensor:
    """cvpods ``iou_loss(box_mode="ltrb", loss_type="giou")``, elementwise over [..., 4]."""
    inputs = torch.cat((-pred_ltrb[..., :2], pred_ltrb[..., 2:]), dim=-1)
    targets = torch.cat((-target_ltrb[..., :2], target_ltrb[..., 2:]), dim=-1)
    eps = torch.finfo(torch.float32).eps
    inputs_area = (inputs[..., 2] - inputs[..., 0]).clamp(min=0) * (
        inputs[..., 3] - inputs[..., 1]).clamp(min=0)
    targets_area = (targets[..., 2] - targets[..., 0]).clamp(min=0) * (
        targets[..., 3] - targets[..., 1]).clamp(min=0)
    w_inter = (torch.min(inputs[..., 2], targets[..., 2])
               - torch.max(inputs[..., 0], targets[..., 0])).clamp(min=0)
    h_inter = (torch.min(inputs[..., 3], targets[..., 3])
               - torch.max(inputs[..., 1], targets[..., 1])).clamp(min=0)
    inter = w_inter * h_inter
    union = targets_area + inputs_area - inter
    ious = inter / union.clamp(min=eps)
    g_w = torch.max(inputs[..., 2], targets[..., 2]) - torch.min(inputs[..., 0], targets[..., 0])
    g_h = torch.max(inputs[..., 3], targets[..., 3]) - torch.min(inputs[..., 1], targets[..., 1])
    area_c = g_w * g_h
    return 1 - (ious - (area_c - union) / area_c.clamp(min=eps))


def hand_pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """(A, B) IoU of XYXY boxes, 0 where they do not intersect."""
    wh = (torch.min(a[:, None, 2:], b[None, :, 2:]) - torch.max(a[:, None, :2], b[None, :, :2]))
    inter = wh.clamp(min=0).prod(dim=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(inter > 0, inter / union, torch.zeros_like(inter))


def dense_reference(
    scene: Scene,
    strides: List[int],
    gts: List[Instances],
    mu: Tensor,
    sigma: Tensor,
    *,
    tau=1 / 3,
    lam=5.0,
    alpha=0.25,
    gamma=2.0,
    norm_weight=0.75,
    documented_edge_cases=True,
) -> Dict[str, Tensor]:
    """
    The released loss (``AutoAssign.losses``, ``positive_bag_loss``, ``negative_bag_loss``,
    ``normal_distribution``, ``normalize`` in the release's auto_assign.py) with full [G, L]
    tensors. With ``documented_edge_cases``
    objects without in-box locations add 0 instead of BCE(0, 1) = 100, and images without any
    in-box pair add 0 to the loss_norm mean instead of G / 1e-12 (the project's documented
    behaviour); without it, the release's values.
    """
    cls_prob = scene.flat(scene.cls).sigmoid()  # (N, L, K)
    obj_prob = scene.flat(scene.obj).sigmoid()  # (N, L, 1)
    ltrb_units = scene.flat(scene.ltrb)  # (N, L, 4)
    points, loc_stride = [], []
    for (h, w), s in zip(scene.grid_sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(h) * float(s), torch.arange(w) * float(s),
                                indexing="ij")
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1))
        loc_stride.append(torch.full((h * w,), float(s)))
    points = torch.cat(points)
    loc_stride = torch.cat(loc_stride)
    pos_losses, neg_losses, norm_terms = [], [], []
    num_fg, num_bg = 0.0, 0.0
    for n, inst in enumerate(gts):
        boxes = inst.gt_boxes.tensor
        labels = inst.gt_classes
        pred = ltrb_units[n] * loc_stride[:, None]  # (L, 4) pixels
        x, y = points[:, 0], points[:, 1]
        tgt = torch.stack([x[None] - boxes[:, 0:1], y[None] - boxes[:, 1:2],
                           boxes[:, 2:3] - x[None], boxes[:, 3:4] - y[None]], dim=2)  # (G, L, 4)
        inbox = tgt.min(dim=-1).values > 0  # (G, L)
        d = torch.stack([(tgt[..., 0] - tgt[..., 2]) / 2, (tgt[..., 1] - tgt[..., 3]) / 2], dim=2)
        d = d / loc_stride[None, :, None]
        gauss = torch.exp(-(d - mu[labels][:, None]) ** 2
                          / (2 * sigma[labels][:, None] ** 2)).prod(dim=-1)  # (G, L)
        p_cls = (cls_prob[n][:, labels] * obj_prob[n]).t()  # (G, L)
        giou = cvpods_giou_loss(pred[None].expand_as(tgt), tgt)
        p_pos = p_cls * torch.exp(-lam * giou)
        wnum = torch.exp(p_pos / tau) * gauss * inbox
        w = wnum / wnum.sum(dim=1, keepdim=True).clamp(min=1e-12)
        bag = (w * p_pos).sum(dim=1)
        pos = F.binary_cross_entropy(bag, torch.ones_like(bag), reduction="none")
        if documented_edge_cases:
            pos = pos * inbox.any(dim=1)
        pos_losses.append(pos.sum())
        with torch.no_grad():
            pred_boxes = torch.stack([x - pred[:, 0], y - pred[:, 1], x + pred[:, 2],
                                      y + pred[:, 3]], dim=1)
            box_prob = torch.zeros_like(cls_prob[n])
            if len(boxes):
                iou_max = hand_pairwise_iou(boxes, pred_boxes).max(dim=0).values  # (L,)
                g_idx, l_idx = torch.nonzero(inbox, as_tuple=True)
                f = 1 / (1 - iou_max[l_idx]).clamp(min=1e-12)
                for g in range(len(boxes)):  # GT-major writes: the later object wins
                    sel = g_idx == g
                    if sel.any():
                        fg = f[sel]
                        fg = (fg - fg.min() + 1e-12) / (fg.max() - fg.min() + 1e-12)
                        box_prob[l_idx[sel], labels[g]] = fg
        p_neg = cls_prob[n] * obj_prob[n] * (1 - box_prob)
        neg_losses.append((p_neg ** gamma * F.binary_cross_entropy(
            p_neg, torch.zeros_like(p_neg), reduction="none")).sum())
        num_fg += len(boxes)
        prior_mass = gauss[inbox].sum()
        num_bg += float(prior_mass.detach())
        if documented_edge_cases and not inbox.any():
            norm_terms.append(prior_mass * 0)
        else:
            norm_terms.append(len(boxes) / prior_mass.clamp(min=1e-12))
    return {
        "loss_pos": alpha * torch.stack(pos_losses).sum() / max(1.0, num_fg),
        "loss_neg": (1 - alpha) * torch.stack(neg_losses).sum() / max(1.0, num_bg),
        "loss_norm": norm_weight * torch.stack(norm_terms).mean(),
    }


def random_gts(num_images: int, num_classes: int, seed: int, image_size=(64, 96),
               num_boxes=6) -> List[Instances]:
    """Random boxes with overlapping same-class pairs, one tiny box (no in-box location) and
    one box with edges exactly on grid points."""
    g = torch.Generator().manual_seed(seed)
    h, w = image_size
    out = []
    for _ in range(num_images):
        xy = torch.rand(num_boxes, 2, generator=g) * torch.tensor([w - 8.0, h - 8.0])
        wh = 3 + torch.rand(num_boxes, 2, generator=g) * 50
        boxes = torch.cat([xy, torch.min(xy + wh, torch.tensor([float(w), float(h)]))], dim=1)
        labels = torch.randint(0, num_classes, (num_boxes,), generator=g)
        # An overlapping copy of box 0 with the same class, shifted by a few pixels.
        boxes = torch.cat([boxes, boxes[:1] + torch.tensor([3.0, 2.0, 5.0, 4.0])])
        labels = torch.cat([labels, labels[:1]])
        # A 1-pixel box between grid points (no location inside) and a grid-aligned box.
        boxes = torch.cat([boxes, torch.tensor([[9.0, 9.0, 10.0, 10.0], [8.0, 16.0, 40.0, 48.0]])])
        labels = torch.cat([labels, torch.tensor([0, labels[0].item()])])
        out.append(make_instances(boxes, labels, image_size))
    return out


STRIDES = [8, 16, 32]
GRIDS = [(8, 12), (4, 6), (2, 3)]  # a 64 x 96 image


# ------------------------------------------------------------------------------------------------
# In-box pairs and the center prior, by hand
# ------------------------------------------------------------------------------------------------


def test_inbox_pairs_equal_dense_nonzero_with_strict_edges_and_offsets():
    gts = random_gts(3, 4, seed=1)
    for offset in (0.0, 0.5):
        gen = build_point_generator(STRIDES, offset)
        centers = torch.cat([b.get_centers() for b in gen([torch.zeros(1, 1, h, w)
                                                           for h, w in GRIDS])])
        for inst in gts:
            boxes = inst.gt_boxes.tensor
            # Boxes partly outside the image and an inverted one must not break it either.
            boxes = torch.cat([boxes, torch.tensor([[-20.0, -5.0, 12.0, 30.0],
                                                    [50.0, 40.0, 200.0, 90.0],
                                                    [30.0, 30.0, 20.0, 20.0]])])
            pairs = inbox_pairs(boxes, GRIDS, STRIDES, offset)
            tgt = torch.stack([centers[None, :, 0] - boxes[:, 0:1],
                               centers[None, :, 1] - boxes[:, 1:2],
                               boxes[:, 2:3] - centers[None, :, 0],
                               boxes[:, 3:4] - centers[None, :, 1]], dim=2)
            g_idx, l_idx = torch.nonzero(tgt.min(dim=2).values > 0, as_tuple=True)
            assert torch.equal(pairs.gt_idx, g_idx)
            assert torch.equal(pairs.loc_idx, l_idx)
            assert torch.equal(pairs.ltrb, tgt[g_idx, l_idx])


def test_grid_aligned_box_excludes_its_edge_points():
    # Box (8, 16, 40, 48) at stride 8: x in {16, 24, 32}, y in {24, 32, 40} strictly inside
    # (9 locations); stride 16: x in {16, 32}, y = 32 (y = 16 and 48 are on the edges);
    # stride 32: x = 32, y = 32.
    pairs = inbox_pairs(torch.tensor([[8.0, 16.0, 40.0, 48.0]]), GRIDS, STRIDES, 0.0)
    assert pairs.gt_idx.tolist() == [0] * 12
    level0 = [i * 12 + j for i in (3, 4, 5) for j in (2, 3, 4)]
    level1 = [96 + 2 * 6 + 1, 96 + 2 * 6 + 2]
    assert pairs.loc_idx.tolist() == level0 + level1 + [96 + 24 + 1 * 3 + 1]
    assert pairs.stride.tolist() == [8.0] * 9 + [16.0] * 2 + [32.0]


def test_center_prior_values_by_hand_stride_normalised_and_per_class():
    # Box (0, 0, 64, 32): centre (32, 16). Location (40, 8) on stride 8: d = (1, -1) strides.
    # Location (48, 16) on stride 16: d = (1, 0). Location (64, 32) on stride 32 is on the edge.
    boxes = torch.tensor([[0.0, 0.0, 64.0, 32.0], [0.0, 0.0, 64.0, 32.0]])
    pairs = inbox_pairs(boxes, GRIDS, STRIDES, 0.0)
    offsets = center_offsets(pairs)
    prior = CenterPrior(2, mode="per_class")
    with torch.no_grad():
        prior.mu.copy_(torch.tensor([[0.0, 0.0], [0.5, -1.0]]))
        prior.sigma.copy_(torch.tensor([[1.0, 1.0], [1.0, 2.0]]))
    values = prior(offsets, torch.tensor([0, 1])[pairs.gt_idx])

    def at(gt, x, y, stride):
        level = STRIDES.index(stride)
        start = sum(h * w for h, w in GRIDS[:level])
        loc = start + (y // stride) * GRIDS[level][1] + x // stride
        (k,) = torch.nonzero((pairs.gt_idx == gt) & (pairs.loc_idx == loc), as_tuple=True)
        return offsets[k].tolist(), values[k].item()

    off, v = at(0, 40, 8, 8)
    assert off == [[1.0, -1.0]]
    assert v == pytest.approx(math.exp(-0.5 - 0.5))  # mu 0, sigma 1
    off, v = at(1, 40, 8, 8)
    # class 1: x: (1 - 0.5)^2 / 2 = 0.125; y: (-1 + 1)^2 / 8 = 0
    assert v == pytest.approx(math.exp(-0.125))
    off, v = at(0, 48, 16, 16)
    assert off == [[1.0, 0.0]]
    assert v == pytest.approx(math.exp(-0.5))
    off, v = at(1, 48, 16, 16)
    # class 1: x: 0.125; y: (0 + 1)^2 / (2 * 4) = 0.125
    assert v == pytest.approx(math.exp(-0.25))


def test_center_prior_modes():
    offsets = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 2])
    assert torch.equal(CenterPrior(3, mode="none")(offsets, labels), torch.ones(2))
    shared = CenterPrior(3, mode="shared", mu_init=1.0, sigma_init=2.0)
    assert shared.mu.shape == (1, 2) and shared.mu.requires_grad
    # d - mu = (0, -1) and (-1, 1); sigma 2: exponents -(1/8) and -(1/8 + 1/8)
    assert torch.allclose(shared(offsets, labels),
                          torch.tensor([math.exp(-0.125), math.exp(-0.25)]))
    fixed = CenterPrior(3, mode="fixed")
    assert not fixed.mu.requires_grad and not fixed.sigma.requires_grad
    per_class = CenterPrior(5, mode="per_class", freeze_sigma=True)
    assert per_class.mu.shape == (5, 2) and per_class.mu.requires_grad
    assert not per_class.sigma.requires_grad
    message = r"SIGMA_INIT \(Python config: model.center_prior.sigma_init\) must be > 0, got 0.0"
    with pytest.raises(ValueError, match=message):
        CenterPrior(3, sigma_init=0.0)
    with pytest.raises(ValueError, match="'gauss'"):
        CenterPrior(3, mode="gauss")


# ------------------------------------------------------------------------------------------------
# Weights by hand
# ------------------------------------------------------------------------------------------------


def test_single_location_object_losses_by_hand():
    """One 4 x 4 grid of stride 8; box (4, 4, 12, 12) contains only the point (8, 8), where the
    predicted ltrb equals the target (GIoU loss 0, P(loc) = 1) and d = 0 (prior 1)."""
    a, b, k = -1.0, 0.5, 3
    scene = Scene(1, k, [(4, 4)],
                  cls=lambda n, c, h, w: torch.full((n, c, h, w), a),
                  ltrb=lambda n, h, w: torch.full((n, 4, h, w), 0.5),
                  obj=lambda n, h, w: torch.full((n, 1, h, w), b))
    model = make_model(k, [8])
    losses = sparse_losses(model, scene, [make_instances([[4, 4, 12, 12]], [1], (32, 32))])
    p = 1 / (1 + math.exp(-a)) / (1 + math.exp(-b))
    # w+ = 1, bag = P+ = p; the single pair has f_n = 1 -> no negative loss at (loc, class 1).
    assert losses["loss_pos"].item() == pytest.approx(0.25 * -math.log(p), rel=1e-5)
    neg_each = p**2 * -math.log(1 - p)
    assert losses["loss_neg"].item() == pytest.approx(0.75 * (16 * k - 1) * neg_each, rel=1e-5)
    # loss_norm = 0.75 * G / sum(prior) = 0.75 * 1 / 1
    assert losses["loss_norm"].item() == pytest.approx(0.75, rel=1e-6)


def test_two_location_weights_and_bag_by_hand():
    """Box (4, 4, 20, 12): points (8, 8) and (16, 8), d = (-0.5, 0) and (0.5, 0) (equal priors);
    perfect boxes there, cls logits a1, a2, obj logit 0: w_i = softmax(3 * P_i)."""
    a1, a2 = 0.3, -2.0
    cls = torch.full((1, 1, 4, 4), -5.0)
    cls[0, 0, 1, 1], cls[0, 0, 1, 2] = a1, a2
    ltrb = torch.zeros(1, 4, 4, 4)
    ltrb[0, :, 1, 1] = torch.tensor([4.0, 4.0, 12.0, 4.0]) / 8
    ltrb[0, :, 1, 2] = torch.tensor([12.0, 4.0, 4.0, 4.0]) / 8
    scene = Scene(1, 1, [(4, 4)], cls=lambda *s: cls.clone(), ltrb=lambda *s: ltrb.clone(),
                  obj=lambda n, h, w: torch.zeros(n, 1, h, w))
    model = make_model(1, [8])
    out = model.dense_outputs(scene.features, scene.predictions())
    pairs, terms = model.positive_terms_single_image(
        out["confidence_prob"][0], out["pred_ltrb"][0], torch.tensor([[4.0, 4.0, 20.0, 12.0]]),
        torch.tensor([0]), out["grid_sizes"])
    p1 = 0.5 / (1 + math.exp(-a1))
    p2 = 0.5 / (1 + math.exp(-a2))
    w1 = math.exp(3 * p1) / (math.exp(3 * p1) + math.exp(3 * p2))
    assert pairs.loc_idx.tolist() == [5, 6]
    assert torch.allclose(terms.prior, torch.full((2,), math.exp(-0.125)))
    assert torch.allclose(terms.p_pos, torch.tensor([p1, p2]))
    assert torch.allclose(terms.pos_weight, torch.tensor([w1, 1 - w1]))
    assert terms.bag.item() == pytest.approx(w1 * p1 + (1 - w1) * p2, rel=1e-6)
    assert terms.loss.item() == pytest.approx(-math.log(w1 * p1 + (1 - w1) * p2), rel=1e-6)


def test_positive_weights_sum_to_one_per_object_and_uniform_without_weights():
    scene = Scene(1, 4, GRIDS, seed=3)
    model = make_model(4, STRIDES)
    gts = random_gts(1, 4, seed=3)[0]
    out = model.dense_outputs(scene.features, scene.predictions())
    args = (out["confidence_prob"][0], out["pred_ltrb"][0], gts.gt_boxes.tensor, gts.gt_classes,
            out["grid_sizes"])
    pairs, terms = model.positive_terms_single_image(*args)
    num_gt = len(gts)
    sums = torch.zeros(num_gt).index_add(0, pairs.gt_idx, terms.pos_weight)
    counts = torch.bincount(pairs.gt_idx, minlength=num_gt)
    assert (counts[-2] == 0) and terms.has_pairs.tolist() == (counts > 0).tolist()
    assert torch.allclose(sums[counts > 0], torch.ones(int((counts > 0).sum())), atol=1e-6)
    assert terms.loss[counts == 0].eq(0).all()
    model.use_pos_weights = False
    pairs, terms = model.positive_terms_single_image(*args)
    assert torch.allclose(terms.pos_weight, 1.0 / counts[pairs.gt_idx].float())


def test_confidence_variants_change_only_the_weights():
    p_cls = torch.tensor([0.2, 0.6, 0.9])
    p_loc = torch.tensor([0.8, 0.3, 0.5])
    prior = torch.tensor([1.0, 0.5, 0.25])
    gt_idx = torch.zeros(3, dtype=torch.long)
    expected_conf = {"joint": p_cls * p_loc, "cls_only": p_cls, "loc_only": p_loc,
                     "none": torch.zeros(3)}
    for name, conf in expected_conf.items():
        terms = positive_terms(p_cls=p_cls, p_loc=p_loc, prior=prior, gt_idx=gt_idx, num_gt=1,
                               confidence=name, tau=0.5, use_pos_weights=True)
        w = torch.exp(conf / 0.5) * prior
        w = w / w.sum()
        assert torch.allclose(terms.pos_weight, w), name
        assert torch.allclose(terms.bag, (w * p_cls * p_loc).sum()), name


def test_negative_weight_zero_at_best_iou_location():
    """One box (8, 8, 40, 40) of class 1 and stride 8: in-box points (16..32)^2. Predicted boxes
    of half size around each point, except one exact box at (24, 24) (IoU 1)."""
    gt = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    points = torch.stack(torch.meshgrid(torch.arange(6) * 8.0, torch.arange(6) * 8.0,
                                        indexing="xy"), dim=-1).reshape(-1, 2)
    pred = torch.full((36, 4), 4.0)
    pred[3 * 6 + 3] = 16.0  # point (24, 24): box (8, 8, 40, 40)
    pairs = inbox_pairs(gt, [(6, 6)], [8], 0.0)
    box_prob, f_n = negative_box_prob(points=points, pred_ltrb=pred, gt_boxes=gt,
                                      gt_classes=torch.tensor([1]), pairs=pairs, num_classes=3)
    assert pairs.loc_idx.numel() == 9
    best = (pairs.loc_idx == 21).nonzero()[0, 0]
    assert f_n[best].item() == 1.0  # w- = 1 - f_n = 0
    assert box_prob[21, 1].item() == 1.0
    # Every other location: IoU (8 x 8) / (32 x 32) = 1/16 -> f equal to the minimum -> ~0.
    others = torch.ones(9, dtype=torch.bool)
    others[best] = False
    assert torch.allclose(f_n[others], torch.zeros(8), atol=1e-6)
    assert box_prob[:, [0, 2]].eq(0).all() and box_prob.sum().item() == pytest.approx(1.0)


def test_same_class_overlap_later_object_wins():
    """A big box B = (4, 4, 28, 28) and a small one S = (12, 12, 20, 20) of the same class share
    location (16, 16), S's only location (f_n = 1 there). B's best location is (8, 8), where
    the prediction equals B, so B's f_n at (16, 16) is ~0. The later object's value is written."""
    big, small = [4.0, 4.0, 28.0, 28.0], [12.0, 12.0, 20.0, 20.0]
    points = torch.stack(torch.meshgrid(torch.arange(4) * 8.0, torch.arange(4) * 8.0,
                                        indexing="xy"), dim=-1).reshape(-1, 2)
    pred = torch.full((16, 4), 2.0)
    pred[1 * 4 + 1] = torch.tensor([4.0, 4.0, 20.0, 20.0])
    shared = 2 * 4 + 2
    for order, expected in (([big, small], 1.0), ([small, big], 0.0)):
        gt = torch.tensor(order)
        pairs = inbox_pairs(gt, [(4, 4)], [8], 0.0)
        box_prob, f_n = negative_box_prob(points=points, pred_ltrb=pred, gt_boxes=gt,
                                          gt_classes=torch.tensor([0, 0]), pairs=pairs,
                                          num_classes=1)
        at_shared = f_n[pairs.loc_idx == shared]
        assert sorted(at_shared.tolist()) == pytest.approx([0.0, 1.0], abs=1e-6)
        assert box_prob[shared, 0].item() == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------------------------
# Sparse vs dense reference
# ------------------------------------------------------------------------------------------------


def _grads(loss: Tensor, params: List[Tensor]) -> List[Tensor]:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_equals_dense_losses_and_gradients(seed):
    k = 4
    scene = Scene(2, k, GRIDS, seed=seed)
    prior = CenterPrior(k)
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        prior.mu.copy_(torch.rand(k, 2, generator=g) - 0.5)
        prior.sigma.copy_(0.7 + torch.rand(k, 2, generator=g))
    model = make_model(k, STRIDES, center_prior=prior)
    gts = random_gts(2, k, seed=seed)
    params = scene.leaves() + [prior.mu, prior.sigma]
    sparse = sparse_losses(model, scene, gts)
    dense = dense_reference(scene, STRIDES, gts, prior.mu, prior.sigma)
    for key in ("loss_pos", "loss_neg", "loss_norm"):
        assert sparse[key].item() == pytest.approx(dense[key].item(), rel=1e-5, abs=1e-8), key
        g_sparse = _grads(sparse[key], params)
        g_dense = _grads(dense[key], params)
        for name, a, b in zip(range(len(params)), g_sparse, g_dense):
            scale = b.abs().max().item() + 1e-12
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale), (key, name)


def test_documented_deviation_from_release_is_the_constant_100():
    """An object without in-box location adds BCE(0, 1) = 100 to the release's positive sum
    (no gradient); ours adds 0. Everything else is identical."""
    k = 4
    scene = Scene(2, k, GRIDS, seed=5)
    gts = random_gts(2, k, seed=5)
    model = make_model(k, STRIDES)
    ours = sparse_losses(model, scene, gts)
    mu, sigma = model.center_prior.mu, model.center_prior.sigma
    release = dense_reference(scene, STRIDES, gts, mu, sigma, documented_edge_cases=False)
    num_gt = sum(len(x) for x in gts)
    empty = sum(int((inbox_pairs(x.gt_boxes.tensor, GRIDS, STRIDES, 0.0).gt_idx == g).sum() == 0)
                for x in gts for g in range(len(x)))
    assert empty >= 2  # at least the 1-pixel box of each image
    assert release["loss_pos"].item() - ours["loss_pos"].item() == pytest.approx(
        0.25 * 100 * empty / num_gt, rel=1e-5)
    assert release["loss_neg"].item() == pytest.approx(ours["loss_neg"].item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# Edge cases
# ------------------------------------------------------------------------------------------------


def _check_finite_and_head_grads(losses: Dict[str, Tensor], scene: Scene, model: AutoAssign):
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for t in scene.leaves():
        assert t.grad is not None and torch.isfinite(t.grad).all()
    for p in (model.center_prior.mu, model.center_prior.sigma):
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_image_without_objects():
    k = 3
    scene = Scene(2, k, GRIDS, seed=7)
    model = make_model(k, STRIDES)
    gts = [make_instances(torch.zeros(0, 4), []), make_instances(torch.zeros(0, 4), [])]
    losses = sparse_losses(model, scene, gts)
    assert losses["loss_pos"].item() == 0.0 and losses["loss_norm"].item() == 0.0
    # All locations are negatives with w- = 1, normalised by max(1, 0) = 1.
    p = scene.flat(scene.cls).sigmoid() * scene.flat(scene.obj).sigmoid()
    expected = 0.75 * (p**2 * -torch.log1p(-p)).sum()
    assert losses["loss_neg"].item() == pytest.approx(expected.item(), rel=1e-5)
    _check_finite_and_head_grads(losses, scene, model)
    # The box branch is in the graph (zero gradient).
    assert all(t.grad.eq(0).all() for t in scene.ltrb)


def test_objects_without_inbox_location_only():
    k = 3
    scene = Scene(1, k, GRIDS, seed=8)
    model = make_model(k, STRIDES)
    gts = [make_instances([[9.0, 9.0, 10.0, 10.0], [17.0, 1.0, 18.5, 7.0]], [0, 2])]
    losses = sparse_losses(model, scene, gts)
    # The release would give loss_pos = 0.25 * 100 and loss_norm = 0.75 * 2 / 1e-12.
    assert losses["loss_pos"].item() == 0.0
    assert losses["loss_norm"].item() == 0.0
    _check_finite_and_head_grads(losses, scene, model)


def test_three_hundred_objects_in_one_image_match_dense():
    k = 5
    grids = [(16, 16), (8, 8), (4, 4)]  # a 128 x 128 image
    scene = Scene(1, k, grids, seed=9)
    g = torch.Generator().manual_seed(9)
    xy = torch.rand(300, 2, generator=g) * 110
    boxes = torch.cat([xy, xy + 4 + torch.rand(300, 2, generator=g) * 30], dim=1)
    gts = [make_instances(boxes, torch.randint(0, k, (300,), generator=g), (128, 128))]
    model = make_model(k, STRIDES)
    sparse = sparse_losses(model, scene, gts)
    dense = dense_reference(scene, STRIDES, gts, model.center_prior.mu, model.center_prior.sigma)
    for key in ("loss_pos", "loss_neg", "loss_norm"):
        assert sparse[key].item() == pytest.approx(dense[key].item(), rel=1e-4), key
    _check_finite_and_head_grads(sparse, scene, model)


def test_negative_iou_max_is_chunked_exactly():
    from autoassign.loss import max_iou_over_gts

    g = torch.Generator().manual_seed(4)
    gts = torch.rand(37, 2, generator=g) * 50
    gts = torch.cat([gts, gts + 1 + torch.rand(37, 2, generator=g) * 20], dim=1)
    preds = torch.rand(101, 2, generator=g) * 50
    preds = torch.cat([preds, preds + torch.rand(101, 2, generator=g) * 20], dim=1)
    full = hand_pairwise_iou(gts, preds).max(dim=0).values
    for budget in (1, 37, 100, 1 << 22):
        assert torch.allclose(max_iou_over_gts(preds, gts, max_elements=budget), full)


def test_bad_ground_truth_gives_clear_errors():
    scene = Scene(1, 3, GRIDS, seed=1)
    model = make_model(3, STRIDES)
    with pytest.raises(ValueError, match=r"gt_classes \[0, 3\] outside \[0, 3\)"):
        sparse_losses(model, scene, [make_instances([[0, 0, 9, 9], [1, 1, 30, 30]], [0, 3])])
    with pytest.raises(ValueError, match="non-finite gt box"):
        sparse_losses(model, scene, [make_instances([[0, 0, float("nan"), 9]], [0])])
