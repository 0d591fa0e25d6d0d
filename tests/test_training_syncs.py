"""The GPU-ready training step of both detectors: the same outputs as the previous per-image
implementations (copied below as references: per-image assignment, boolean-mask gathers, fvcore's
GIoU, ``unique`` and Detectron2's ``pairwise_iou`` in AutoAssign's negative weights) on random
scenes with edge cases (images without boxes, 1000 boxes, tiny and huge boxes), and a number of
host-device synchronisations per training step that does not grow with images or boxes
(counted with the benchmark's ``SyncCounter``, exact on the CPU)."""
import os
import random
import sys
from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F
from fvcore.nn import giou_loss as fvcore_giou_loss
from fvcore.nn import sigmoid_focal_loss_jit
from torch import Tensor

from anchor_free.distributed import reduce_mean
from anchor_free.inbox import inbox_pairs
from anchor_free.losses import giou_loss
from autoassign.loss import (
    EPS,
    center_offsets,
    localization_likelihood,
    max_iou_over_gts,
    negative_bag_loss,
    positive_terms,
)
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage
from pseudo_iou.assignment import centerness
from pseudo_iou.testing import tiny_pseudo_iou_cfg

from common import gt_instances
from test_autoassign_loss import Scene, make_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
from benchmarks.syncs import SyncCounter, input_tensors  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STRIDES = [8, 16, 32, 64, 128]
IMAGE_H, IMAGE_W = 200, 296
GRIDS = [(-(-IMAGE_H // s), -(-IMAGE_W // s)) for s in STRIDES]


def random_boxes(rng: random.Random, count: int) -> List[List[float]]:
    """Normal, tiny (1-4 px), huge (beyond the image) and duplicated boxes."""
    boxes = []
    for k in range(count):
        kind = k % 4
        if kind == 3 and boxes:
            boxes.append(list(boxes[rng.randrange(len(boxes))]))
            continue
        size = {0: rng.uniform(8, 150), 1: rng.uniform(1, 4), 2: rng.uniform(300, 900)}[kind]
        w, h = size * rng.uniform(0.5, 1.5), size * rng.uniform(0.5, 1.5)
        x0, y0 = rng.uniform(-w / 2, IMAGE_W - w / 2), rng.uniform(-h / 2, IMAGE_H - h / 2)
        boxes.append([x0, y0, x0 + w, y0 + h])
    return boxes


def random_batch(seed: int, counts: List[int], num_classes: int) -> List[Instances]:
    rng = random.Random(seed)
    return [
        gt_instances(
            random_boxes(rng, c) if c else [],
            [rng.randrange(num_classes) for _ in range(c)],
            (IMAGE_H, IMAGE_W),
        )
        for c in counts
    ]


BATCHES = [[3, 0, 7], [0, 0], [1], [1000, 5], [40, 40, 40]]


# ------------------------------------------------------------------------------------------------
# GIoU
# ------------------------------------------------------------------------------------------------
def test_giou_loss_equals_fvcore_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 50
    wh = torch.rand(500, 2, generator=g) * 30
    wh[:20] = 0.0  # zero-size boxes
    boxes1 = torch.cat([xy, xy + wh], dim=1)
    boxes2 = torch.cat([xy + 10, xy + 10 + wh.flip(1)], dim=1)  # some overlap, some do not
    boxes2[:50] = boxes1[:50]  # identical
    grads = []
    for fn in (lambda a, b: fvcore_giou_loss(a, b, reduction="none", eps=1e-6),
               lambda a, b: giou_loss(a, b, eps=1e-6)):
        a, b = boxes1.clone().requires_grad_(), boxes2.clone().requires_grad_()
        loss = fn(a, b)
        (loss * torch.linspace(0.5, 1.5, 500)).sum().backward()
        grads.append((loss.detach(), a.grad, b.grad))
    (ref, ref_a, ref_b), (new, new_a, new_b) = grads
    assert torch.equal(ref, new) and torch.equal(ref_a, new_a) and torch.equal(ref_b, new_b)
    assert bool((ref > 1).any()) and bool((ref == 0).any())  # disjoint and identical pairs


# ------------------------------------------------------------------------------------------------
# Pseudo-IoU: the previous per-image labels and boolean-mask losses
# ------------------------------------------------------------------------------------------------
def _ltrb_to_boxes(ltrb: Tensor) -> Tensor:
    left, top, right, bottom = ltrb.unbind(dim=-1)
    return torch.stack([-left, -top, right, bottom], dim=-1)


def reference_pseudo_iou_losses(model, points, cls_logits, box_ltrb, ctr_logits, gts):
    """``PseudoIoU.label_points`` + ``losses`` before this change: one dense assignment per
    image, boolean-mask gathers, fvcore's GIoU, F.one_hot."""
    centers = Boxes.cat(points).get_centers()
    labels, boxes = [], []
    for inst in gts:
        matched, _ = model.assigner(centers, [len(p) for p in points], inst.gt_boxes)
        is_pos = matched >= 0
        if len(inst) > 0:
            safe = matched.clamp(min=0)
            labels.append(torch.where(is_pos, inst.gt_classes[safe],
                                      torch.full_like(safe, model.num_classes)))
            boxes.append(inst.gt_boxes.tensor[safe] * is_pos[:, None].float())
        else:
            labels.append(torch.full((len(centers),), model.num_classes, dtype=torch.long))
            boxes.append(centers.new_zeros((len(centers), 4)))
    gt_labels, gt_boxes = torch.stack(labels), torch.stack(boxes)
    cls_all, ltrb_all = torch.cat(cls_logits, dim=1), torch.cat(box_ltrb, dim=1)
    pos_mask = gt_labels != model.num_classes
    num_pos = reduce_mean(pos_mask.sum().float()).clamp(min=1.0)
    onehot = F.one_hot(gt_labels, model.num_classes + 1)[..., :-1]
    loss_cls = sigmoid_focal_loss_jit(cls_all, onehot.float(), alpha=0.25, gamma=2.0,
                                      reduction="sum") / num_pos
    anchors = Boxes.cat(points).tensor[None].expand(pos_mask.shape[0], -1, -1)[pos_mask]
    target = model.box2box_transform.get_deltas(anchors, gt_boxes[pos_mask])
    pred = ltrb_all[pos_mask]
    ctr_t = centerness(target)
    if bool(pos_mask.any()):
        reg = fvcore_giou_loss(_ltrb_to_boxes(pred), _ltrb_to_boxes(target), reduction="none",
                               eps=1e-6)
        loss_box = (reg * ctr_t).sum() / reduce_mean(ctr_t.sum()).clamp(min=1e-6)
        ctr_all = torch.cat(ctr_logits, dim=1)[..., 0]
        loss_ctr = F.binary_cross_entropy_with_logits(ctr_all[pos_mask], ctr_t,
                                                      reduction="sum") / num_pos
    else:
        loss_box = ltrb_all.sum() * 0
        loss_ctr = torch.cat(ctr_logits, dim=1).sum() * 0
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box, "loss_centerness": loss_ctr}


@pytest.fixture(scope="module")
def pseudo_iou_model():
    torch.manual_seed(0)
    return build_model(tiny_pseudo_iou_cfg(num_classes=3))


@pytest.mark.parametrize("seed,counts", list(enumerate(BATCHES)))
def test_pseudo_iou_losses_and_gradients_equal_the_previous_implementation(
    pseudo_iou_model, seed, counts
):
    model = pseudo_iou_model
    points = model.point_generator([torch.zeros(1, 1, h, w) for h, w in GRIDS])
    sizes = [len(p) for p in points]
    gts = random_batch(seed, counts, 3)
    gen = torch.Generator().manual_seed(seed)
    n = len(counts)
    leaves = [torch.randn(n, sum(sizes), 3, generator=gen) * 2 - 2,
              torch.rand(n, sum(sizes), 4, generator=gen) * 3,
              torch.randn(n, sum(sizes), 1, generator=gen)]
    results = []
    for new in (True, False):
        xs = [t.clone().requires_grad_() for t in leaves]
        split = [list(x.split(sizes, dim=1)) for x in xs]
        if new:
            targets = model.label_points(points, gts, GRIDS)
            losses = model.losses(points, *split, targets)
        else:
            losses = reference_pseudo_iou_losses(model, points, *split, gts)
        sum(losses.values()).backward()
        results.append((losses, [x.grad for x in xs]))
    (new_l, new_g), (ref_l, ref_g) = results
    assert set(new_l) == set(ref_l)
    for key in ref_l:
        assert torch.allclose(new_l[key], ref_l[key], rtol=1e-6, atol=0), key
    for a, b in zip(new_g, ref_g):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9)
    if sum(counts):
        assert new_l["loss_box_reg"] > 0


# ------------------------------------------------------------------------------------------------
# AutoAssign: the previous per-image loss
# ------------------------------------------------------------------------------------------------
def reference_negative_box_prob(points, pred_ltrb, gt_boxes, gt_classes, pairs, num_classes):
    """``negative_box_prob`` before this change (one image; unique locations, ``unique`` keys,
    Detectron2's ``pairwise_iou``)."""
    box_prob = pred_ltrb.new_zeros(points.shape[0], num_classes)
    gt_idx, loc_idx = pairs.gt_idx, pairs.loc_idx
    if gt_idx.numel() == 0:
        return box_prob
    inside = torch.zeros(points.shape[0], dtype=torch.bool)
    inside[loc_idx] = True
    unique_loc = torch.nonzero(inside, as_tuple=True)[0]
    inverse = (torch.cumsum(inside, 0) - 1)[loc_idx]
    lp, lt = points[unique_loc], pred_ltrb[unique_loc]
    pred_boxes = torch.cat([lp - lt[:, :2], lp + lt[:, 2:]], dim=1)
    iou = pairwise_iou(Boxes(gt_boxes), Boxes(pred_boxes)).max(dim=0).values[inverse]
    f = 1.0 / (1.0 - iou).clamp(min=EPS)
    g = gt_boxes.shape[0]
    f_min = f.new_zeros(g).scatter_reduce(0, gt_idx, f, "amin", include_self=False)[gt_idx]
    f_max = f.new_zeros(g).scatter_reduce(0, gt_idx, f, "amax", include_self=False)[gt_idx]
    nf = (f - f_min + EPS) / (f_max - f_min + EPS)
    key = loc_idx * num_classes + gt_classes[gt_idx]
    unique_key, key_inverse = torch.unique(key, return_inverse=True)
    winner = torch.full_like(unique_key, -1).scatter_reduce(
        0, key_inverse, torch.arange(key.shape[0]), "amax", include_self=True)
    box_prob.view(-1)[unique_key] = nf[winner]
    return box_prob


def reference_autoassign_losses(model, scene: Scene, gts: List[Instances]) -> Dict[str, Tensor]:
    """``AutoAssign.forward_training`` before this change: a loop over images."""
    out = model.dense_outputs(scene.features, scene.predictions())
    conf, pred = out["confidence_prob"], out["pred_ltrb"]
    pos, neg, norm = [], [], []
    num_fg, num_bg = pred.new_zeros(()), pred.new_zeros(())
    for n, inst in enumerate(gts):
        boxes, classes = inst.gt_boxes.tensor.float(), inst.gt_classes.long()
        pairs = inbox_pairs(boxes, out["grid_sizes"], model.strides, 0.0)
        pc = classes[pairs.gt_idx]
        prior = model.center_prior(center_offsets(pairs), pc)
        loss = fvcore_giou_loss(
            torch.cat([-pred[n][pairs.loc_idx][:, :2], pred[n][pairs.loc_idx][:, 2:]], 1),
            torch.cat([-pairs.ltrb[:, :2], pairs.ltrb[:, 2:]], 1), reduction="none")
        terms = positive_terms(p_cls=conf[n][pairs.loc_idx, pc],
                               p_loc=torch.exp(-model.loc_lambda * loss), prior=prior,
                               gt_idx=pairs.gt_idx, num_gt=len(boxes), confidence="joint",
                               tau=model.tau, use_pos_weights=True)
        pos.append(terms.loss.sum())
        num_fg += len(boxes)
        prior_sum = terms.prior.sum()
        num_bg += prior_sum.detach()
        norm.append(len(boxes) / prior_sum.clamp(min=EPS) if pairs.gt_idx.numel() > 0
                    else prior_sum * 0.0)
        box_prob = reference_negative_box_prob(out["points"], pred[n].detach(), boxes, classes,
                                               pairs, model.num_classes)
        neg.append(negative_bag_loss(conf[n] * (1 - box_prob), 2.0).sum())
    num_fg, num_bg = num_fg.clamp(min=1.0), num_bg.clamp(min=1.0)
    return {
        "loss_pos": 0.25 * (torch.stack(pos).sum() + pred.sum() * 0.0) / num_fg,
        "loss_neg": 0.75 * torch.stack(neg).sum() / num_bg,
        "loss_norm": 0.75 * torch.stack(norm).mean() + model.center_prior.zero_grad_term(pred),
    }


@pytest.mark.parametrize("seed,counts", list(enumerate(BATCHES)))
def test_autoassign_losses_and_gradients_equal_the_previous_implementation(seed, counts):
    model = make_model(3, STRIDES)
    gts = random_batch(seed, counts, 3)
    results = []
    for fn in (lambda s: model.forward_training(None, s.features, s.predictions(), gts),
               lambda s: reference_autoassign_losses(model, s, gts)):
        scene = Scene(len(counts), 3, GRIDS, seed=seed)
        model.zero_grad()
        losses = fn(scene)
        sum(losses.values()).backward()
        grads = [t.grad for t in scene.leaves()] + [model.center_prior.mu.grad,
                                                    model.center_prior.sigma.grad]
        results.append((losses, grads))
    (new_l, new_g), (ref_l, ref_g) = results
    assert set(new_l) == set(ref_l)
    for key in ref_l:
        assert torch.allclose(new_l[key], ref_l[key], rtol=1e-5, atol=0), key
    for a, b in zip(new_g, ref_g):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-8)
    if sum(counts):
        assert new_l["loss_pos"] > 0 and new_l["loss_norm"] > 0


def test_max_iou_equals_detectron2_pairwise_iou_exactly():
    g = torch.Generator().manual_seed(3)
    gts = torch.rand(57, 2, generator=g) * 60
    gts = torch.cat([gts, gts + torch.rand(57, 2, generator=g) * 30], dim=1)
    gts[:3, 2:] = gts[:3, :2]  # zero-area objects
    preds = torch.rand(301, 2, generator=g) * 60
    preds = torch.cat([preds, preds + torch.rand(301, 2, generator=g) * 30], dim=1)
    preds[:5, 2:] = preds[:5, :2]  # zero-area predictions
    expected = pairwise_iou(Boxes(gts), Boxes(preds)).max(dim=0).values
    for budget in (1, 57 * 10, 1 << 22):
        assert torch.equal(max_iou_over_gts(preds, gts, max_elements=budget), expected)


# ------------------------------------------------------------------------------------------------
# Synchronisations of a training step: constant in images and boxes
# ------------------------------------------------------------------------------------------------
def _syncs_of_a_training_step(model, counts, seed=0) -> int:
    rng = random.Random(seed)
    batch = [{"image": torch.rand(3, 96, 128) * 255,
              "instances": gt_instances(
                  [[x, y, x + rng.uniform(4, 60), y + rng.uniform(4, 60)]
                   for x, y in ((rng.uniform(0, 100), rng.uniform(0, 70)) for _ in range(c))],
                  [rng.randrange(3) for _ in range(c)], (96, 128))} for c in counts]
    model.train()
    with EventStorage(), SyncCounter(input_tensors(batch), "cpu") as counter:
        losses = model(batch)
        sum(losses.values()).backward()
    return counter.total_without_inputs


@pytest.mark.parametrize("arch", ["PseudoIoU", "AutoAssign"])
def test_training_step_syncs_do_not_grow_with_images_or_boxes(pseudo_iou_model, arch):
    """Pseudo-IoU: the batched ground-truth check, the three of inbox_pairs (repeat_interleave's
    two host reads, the number of candidate cells and the check that none is negative; the
    nonzero of the pairs kept), the positives' nonzero, the one fetch of the logged statistics:
    6. AutoAssign: the check and inbox_pairs: 4. (Detectron2's FCOS: 19 for 2 images.)"""
    if arch == "PseudoIoU":
        model = pseudo_iou_model
    else:
        cfg = tiny_pseudo_iou_cfg(num_classes=3)
        from autoassign.config import add_autoassign_config

        add_autoassign_config(cfg)
        cfg.MODEL.META_ARCHITECTURE = "AutoAssign"
        cfg.MODEL.AUTOASSIGN.NUM_CLASSES = 3
        cfg.MODEL.AUTOASSIGN.NUM_CONVS = 1
        torch.manual_seed(0)
        model = build_model(cfg)
    # Detectron2's own anchor generator: none on v0.6, 2 host-made shift copies per level on
    # main (its _create_grid_offsets), the same for every detector built on it.
    features = [torch.zeros(1, 1, h, w) for h, w in [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]]
    with SyncCounter() as generator:
        model.point_generator(features)
    expected = {"PseudoIoU": 6, "AutoAssign": 4}[arch] + generator.total
    counts = [_syncs_of_a_training_step(model, c, seed)
              for seed, c in enumerate([[1], [5, 5], [30, 0, 30], [100, 100]])]
    assert counts == [expected] * 4
