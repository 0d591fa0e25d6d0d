"""AutoAssign's weighting and losses on the in-box (object, location) pairs only.

The released code (``AutoAssign.losses`` in ``Megvii-BaseDetection/AutoAssign``) builds [G, L]
and [G, L, 4] tensors for every image (G objects, L locations over all FPN levels). Only the M
(object, location) pairs with the location strictly inside the object's box ever contribute (the
others have w+ = 0 and no gradient through it), so everything here works on those pairs:

* :func:`anchor_free.inbox.inbox_pairs` enumerates them from the regular point grids (box ->
  range of grid cells), in O(M + G x levels) time and memory, in the same GT-major order as
  ``nonzero(inbox[G, L])`` (shared with Pseudo-IoU's sparse point assignment);
* per-object sums and min/max use ``index_add_`` / ``scatter_reduce``;
* the IoU max over all objects needed by the negative weights is computed in chunks of
  bounded size;
* the GIoU likelihood of the pairs and (``center_prior.py``) their center prior have their
  gradients written out (``torch.autograd.Function``), so the autograd graph keeps the inputs
  and outputs only, and work in chunks of bounded size;
* the whole batch is one set of pairs (object indices over the batch), so the loss has no
  per-image or per-object host synchronisation (three per batch, in ``inbox_pairs``).

Naming: G objects, L locations (all levels, finest first, row-major), K classes, M pairs.
Distances are in input pixels unless said otherwise.
"""
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from anchor_free.inbox import InboxPairs
from anchor_free.losses import giou_loss

__all__ = [
    "PositiveTerms",
    "center_offsets",
    "localization_likelihood",
    "positive_terms",
    "max_iou_over_gts",
    "negative_box_prob",
    "negative_bag_loss",
    "explicit_objectness_loss",
]

# Clamp of the released code for divisions by sums and by (1 - IoU).
EPS = 1e-12


class PositiveTerms(NamedTuple):
    """Per-pair and per-object quantities of the positive loss (paper Eq. 1-4)."""

    prior: Tensor  # (M,) center weighting G(d)
    p_pos: Tensor  # (M,) P+ = P(cls) * P(loc)
    confidence_weight: Tensor  # (M,) C = exp(confidence / tau), ones without confidence
    pos_weight: Tensor  # (M,) w+, sums to 1 over each object's pairs
    bag: Tensor  # (G,) sum over the object's pairs of w+ * P+; 0 for objects without pairs
    has_pairs: Tensor  # (G,) bool, object has at least one in-box location
    loss: Tensor  # (G,) BCE(bag, 1) = -log(bag); 0 for objects without pairs (see below)


def center_offsets(pairs: InboxPairs) -> Tensor:
    """(M, 2): ((l - r) / 2, (t - b) / 2) / stride = (x - cx, y - cy) in strides (paper Eq. 1)."""
    ltrb = pairs.ltrb
    offsets = torch.stack([ltrb[:, 0] - ltrb[:, 2], ltrb[:, 1] - ltrb[:, 3]], dim=1) / 2
    return offsets / pairs.stride[:, None]


def _ltrb_to_boxes(ltrb: Tensor) -> Tensor:
    """(M, 4) ltrb distances -> (M, 4) XYXY boxes around the origin."""
    return torch.cat([-ltrb[:, :2], ltrb[:, 2:]], dim=1)


def localization_likelihood(pred_ltrb: Tensor, target_ltrb: Tensor, loc_lambda: float) -> Tensor:
    """
    P(loc) = exp(-lambda * GIoU loss) of each pair (paper Eq. 2); not detached.

    The values are those of ``exp(-lambda * giou_loss(boxes))`` (fvcore's GIoU loss of the
    released code, computed by the same operations); the gradient with respect to
    ``pred_ltrb`` is written out (:class:`_LocalizationLikelihood`), so the autograd graph keeps
    only the (M, 4) inputs and the (M,) output instead of about twenty (M,) intermediates.

    Args:
        pred_ltrb: (M, 4) predicted distances (>= 0) at the pair's location, pixels.
        target_ltrb: (M, 4) distances to the pair's box (> 0), pixels; no gradient.
    Returns:
        (M,) in (0, 1].
    """
    return _LocalizationLikelihood.apply(pred_ltrb, target_ltrb.detach(), float(loc_lambda))


def _giou_likelihood_grad(
    grad_p: Tensor, pred: Tensor, target: Tensor, p_loc: Tensor, loc_lambda: float,
    eps: float = 1e-7,
) -> Tensor:
    """
    Gradient of ``exp(-lambda * giou_loss)`` with respect to the predicted ltrb, for boxes
    ``(-l, -t, r, b)`` and ``(-l*, -t*, r*, b*)`` around the same location: the width of the
    intersection / enclosing box is ``min(l, l*) + min(r, r*)`` / ``max(l, l*) + max(r, r*)``,
    and a coordinate's gradient through them goes to the prediction where it is the smaller /
    larger one (half on ties, as autograd's ``maximum`` / ``minimum``).

    With I, A (predicted area), C (enclosing area), u = U + eps, c = C + eps and
    GIoU = I / u - (C - U) / c (U = A + A* - I), a side's gradient is

    * where the prediction is the smaller side (through the intersection):
      ``h_in dG/dI + h dG/dA = h / u - (h - h_in) dG/dI`` with
      ``dG/dI = (C - U) / (u c) + I / u^2`` and ``dG/dA = 1 / c - I / u^2``
      (``h / c`` without an intersection);
    * where it is the larger side (through the enclosing box):
      ``h dG/dA + h_out dG/dC = h ((C - U) / c^2 - I / u^2) - (h_out - h) u / c^2``,

    h, h_in, h_out being the other dimension of the predicted, intersection and enclosing boxes.
    These are the cancellation-free forms: summed term by term (``dG/dC = -u / c^2`` plus
    ``dG/dA``, as autograd does), a prediction enclosing a much smaller object (the release's
    4-stride initial boxes around a small object) loses to float32 rounding the ``I / u^2`` left
    when the ``1 / c`` terms cancel (1e-4 to 1e-3 relative per pair); here
    ``C - U = (C - A) + (I - A*)`` is exactly 0 when a box encloses the other, and
    ``h_out - h`` / ``h - h_in`` exactly 0 when the prediction is larger / smaller on both
    sides (``benchmarks/experiments/giou_grad_accuracy.py``).

    Args:
        grad_p: (P,) upstream gradient; p_loc: (P,) forward output;
        pred, target: (2, 2, P) ltrb as ((l, t), (r, b)), each (P,) row contiguous;
        eps: ``giou_loss``'s eps (added to the union and the enclosing area).
    Returns:
        (2, 2, P) in the layout of ``pred``.
    """
    near, far = pred[0], pred[1]  # (2, P) each: (l, t), (r, b)
    target_near, target_far = target[0], target[1]
    # (2, P) (w, h) of the intersection, enclosing, predicted and target boxes; rows added
    # and multiplied as binary operations (cheaper than reductions over a dimension of 2)
    size_in = torch.minimum(near, target_near).add_(torch.minimum(far, target_far))
    size_out = torch.maximum(near, target_near).add_(torch.maximum(far, target_far))
    size_pred = near + far
    size_target = target_near + target_far
    overlap = (size_in[0] > 0).logical_and_(size_in[1] > 0)
    inter = (size_in[0] * size_in[1]).mul_(overlap)
    area_pred = size_pred[0] * size_pred[1]
    area_target = size_target[0] * size_target[1]
    area_c = size_out[0] * size_out[1]
    union_eps = (area_pred + area_target).sub_(inter).add_(eps)
    c_minus_u = (area_c - area_pred).add_(inter.sub(area_target))  # 0 if a box encloses
    # d out / d giou = lambda p; each (P,) below is that times a derivative of the GIoU.
    g = (grad_p * p_loc).mul_(loc_lambda)
    inv_c = area_c.add_(eps).reciprocal_()
    inv_u = union_eps.reciprocal()
    g_c = inv_c.mul(g)  # g / c
    g_iu2 = inter.mul_(inv_u).mul_(inv_u).mul_(g)  # g I / u^2
    g_inter = c_minus_u.mul(inv_u).mul_(g_c).add_(g_iu2).mul_(overlap)  # dG/dI
    g_larger = c_minus_u.mul_(inv_c).mul_(g_c).sub_(g_iu2)  # dG/dA + dG/dC
    g_area_c = union_eps.mul_(inv_c).mul_(g_c)  # -dG/dC
    # A side's gradient through an area is the other side's length: flip (w, h) -> (h, w).
    h_pred, h_in, h_out = size_pred.flip(0), size_in.flip(0), size_out.flip(0)
    # h_in dG/dI + h dG/dA = h / u - (h - h_in) dG/dI (dG/dI + dG/dA = 1 / u with an
    # intersection; without one dG/dI = 0 and I = 0: h / c)
    g_u = torch.where(overlap, inv_u.mul(g), g_c)
    smaller = (h_pred * g_u).sub_(h_pred.sub(h_in).mul_(g_inter))  # (2, P)
    larger = h_pred.mul(g_larger).sub_(h_out.sub_(h_pred).mul_(g_area_c))
    # (2, 2, P): l = -x1 with x1 = max(-l, -l*) in the intersection, min in the enclosing box
    grad = torch.where(pred < target, smaller, larger)
    return torch.where(pred == target, smaller.add_(larger).mul_(0.5), grad)


class _LocalizationLikelihood(torch.autograd.Function):
    """``exp(-lambda * giou_loss(ltrb boxes))`` with the gradient of fvcore's GIoU loss
    (``fvcore/nn/giou_loss.py``, used by the released code) written out
    (:func:`_giou_likelihood_grad`); forward and backward in chunks of ``CHUNK`` pairs, so
    their temporaries are bounded whatever the number of pairs."""

    CHUNK = 1 << 16

    @staticmethod
    def forward(ctx, pred_ltrb: Tensor, target_ltrb: Tensor, loc_lambda: float) -> Tensor:
        parts = []
        with torch.no_grad():
            for pred, target in _ltrb_chunks(pred_ltrb, target_ltrb, _LocalizationLikelihood.CHUNK):
                # (P, 4) views of (4, P) boxes: each coordinate a contiguous row.
                loss = giou_loss(_ltrb_to_boxes_t(pred).t(), _ltrb_to_boxes_t(target).t())
                parts.append(torch.exp(loss.mul_(-loc_lambda)))
        p_loc = torch.cat(parts) if parts else pred_ltrb.new_zeros(0)
        ctx.loc_lambda = loc_lambda
        ctx.save_for_backward(pred_ltrb, target_ltrb, p_loc)
        return p_loc

    @staticmethod
    def backward(ctx, grad_p: Tensor):
        pred_ltrb, target_ltrb, p_loc = ctx.saved_tensors
        grad = torch.empty_like(pred_ltrb)
        chunk = _LocalizationLikelihood.CHUNK
        chunks = _ltrb_chunks(pred_ltrb, target_ltrb, chunk)
        for start, (pred, target) in zip(range(0, pred_ltrb.shape[0], chunk), chunks):
            end = start + chunk
            grad_t = _giou_likelihood_grad(
                grad_p[start:end], pred.view(2, 2, -1), target.view(2, 2, -1),
                p_loc[start:end], ctx.loc_lambda,
            )
            grad[start:end] = grad_t.view(4, -1).t()
        return grad, None, None


def _ltrb_chunks(pred_ltrb: Tensor, target_ltrb: Tensor, chunk: int):
    """Yields (4, P) contiguous copies (rows l, t, r, b) of consecutive chunks of P pairs."""
    for start in range(0, pred_ltrb.shape[0], chunk):
        yield (pred_ltrb[start : start + chunk].t().contiguous(),
               target_ltrb[start : start + chunk].t().contiguous())


def _ltrb_to_boxes_t(ltrb: Tensor) -> Tensor:
    """(4, P) ltrb -> (4, P) XYXY boxes around the origin (:func:`_ltrb_to_boxes` transposed)."""
    return torch.cat([-ltrb[:2], ltrb[2:]], dim=0)


def positive_terms(
    *,
    p_cls: Tensor,
    p_loc: Tensor,
    prior: Tensor,
    gt_idx: Tensor,
    num_gt: int,
    confidence: str,
    tau: float,
    use_pos_weights: bool,
) -> PositiveTerms:
    """
    Positive weights and the positive bag loss of one image (paper Eq. 3, 4, 6):
    ``w+ = C(P) G / sum_{object's pairs} C(P) G`` with ``C(P) = exp(P / tau)`` and
    ``loss_g = -log(sum w+ P+)``, ``P+ = P(cls) * P(loc)``. Nothing is detached.

    ``confidence`` picks the P inside C: "joint" (P+), "cls_only" (P(cls)), "loc_only" (P(loc)),
    "none" (C = 1: center weighting only). With ``use_pos_weights=False`` w+ is uniform over
    the object's pairs. The bag always uses the joint P+ (it is the only box-regression signal).

    Objects without any pair: the release gets bag = 0 and a constant BCE of 100 (torch's
    log clamp) without gradient; here their loss is 0 (same gradients, finite and smaller value).

    Args:
        p_cls: (M,) classification confidence of the object's class at the location.
        p_loc: (M,) localisation likelihood.
        prior: (M,) center weighting.
        gt_idx: (M,) object of each pair, sorted.
        num_gt: G.
    """
    p_pos = p_cls * p_loc
    if confidence == "joint":
        conf = p_pos
    elif confidence == "cls_only":
        conf = p_cls
    elif confidence == "loc_only":
        conf = p_loc
    else:
        conf = None
    confidence_weight = torch.ones_like(p_pos) if conf is None else torch.exp(conf / tau)
    if use_pos_weights:
        weight = confidence_weight * prior
    else:
        weight = torch.ones_like(p_pos)
    denom = p_pos.new_zeros(num_gt).index_add(0, gt_idx, weight)
    pos_weight = weight / denom.index_select(0, gt_idx).clamp(min=EPS)
    bag = p_pos.new_zeros(num_gt).index_add(0, gt_idx, pos_weight * p_pos)
    has_pairs = torch.zeros(num_gt, dtype=torch.bool, device=p_pos.device)
    has_pairs[gt_idx] = True
    # bag <= 1 up to rounding; BCE rejects inputs above 1.
    loss = _bce(bag.clamp(max=1.0), 1.0) * has_pairs
    return PositiveTerms(prior, p_pos, confidence_weight, pos_weight, bag, has_pairs, loss)


@torch.no_grad()
def max_iou_over_gts(
    pred_boxes: Tensor, gt_boxes: Tensor, max_elements: int = 1 << 16
) -> Tensor:
    """
    (U,) max over all G objects of IoU(object, predicted box): the values of Detectron2's
    ``pairwise_iou(Boxes(gt_boxes), Boxes(pred_boxes)).max(dim=0)`` (the same arithmetic:
    intersection ``(min(x1) - max(x0)).clamp(0) * (min(y1) - max(y0)).clamp(0)``, IoU
    ``inter / (area_pred + area_gt - inter)`` where ``inter > 0``, else 0), with fewer
    temporaries, computed in chunks of at most ``max_elements`` entries (memory
    O(max_elements), not O(G x U)).

    Args:
        pred_boxes: (U, 4) XYXY predicted boxes, pixels.
        gt_boxes: (G, 4) XYXY, G >= 1.
    """
    chunk = max(1, max_elements // max(1, gt_boxes.shape[0]))
    gx0, gy0, gx1, gy1 = gt_boxes.unbind(dim=1)
    gt_area = (gx1 - gx0) * (gy1 - gy0)  # (G,)
    parts = []
    for start in range(0, pred_boxes.shape[0], chunk):
        px0, py0, px1, py1 = (c[:, None] for c in pred_boxes[start : start + chunk].unbind(dim=1))
        pred_area = (px1 - px0) * (py1 - py0)  # (U_c, 1)
        width = (torch.minimum(px1, gx1) - torch.maximum(px0, gx0)).clamp_(min=0)
        height = (torch.minimum(py1, gy1) - torch.maximum(py0, gy0)).clamp_(min=0)
        inter = width.mul_(height)  # (U_c, G)
        # Detectron2: inter / (gt_area + pred_area - inter) where inter > 0, else 0. Here the
        # union is clamped at the smallest normal float instead, which changes no value where
        # inter > 0 (the union is >= inter > 0 there) and gives 0 / union = 0 elsewhere.
        union = ((pred_area + gt_area) - inter).clamp_(min=torch.finfo(inter.dtype).tiny)
        parts.append(inter.div_(union).max(dim=1).values)
    return torch.cat(parts) if parts else pred_boxes.new_zeros(0)


@torch.no_grad()
def negative_box_prob(
    *,
    points: Tensor,
    pred_ltrb: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    pairs: InboxPairs,
    num_classes: int,
    boxes_per_image: Optional[Sequence[int]] = None,
) -> Tuple[Tensor, Tensor]:
    """
    ``1 - w-`` (paper Eq. 5), dense over (location, class), of one image or of a batch.

    For each pair: ``f = 1 / (1 - IoU_max)``, IoU_max over ALL objects of the image of the
    location's predicted box; ``f`` is min-max normalised over the object's pairs (the best
    location of each object gets 1, i.e. zero negative loss for its class). Pairs write their
    value at (location, class of the object); where two objects of the same class contain the
    same location, the later object (higher index) wins, as the release's GT-major
    ``index_put`` does on CPU (deterministic here, unspecified on CUDA in the release).

    No host synchronisation: IoU_max is computed for every location of each image (chunked;
    the release computes the dense [G, L] IoU too), and the winner of each (location, class)
    is found with ``scatter_reduce``, not ``unique``.

    Args:
        points: (L, 2) location coordinates, pixels.
        pred_ltrb: (L, 4) predicted distances, pixels, of one image; or (N, L, 4) of N images.
        gt_boxes: (G, 4); gt_classes: (G,) long: the boxes of the images, concatenated.
        pairs: the in-box pairs (``gt_idx`` into ``gt_boxes``, ``loc_idx`` within the image).
        boxes_per_image: G_n per image (sum G) with a batch; default one image of G boxes.
    Returns:
        box_prob: (L, K), or (N, L, K), in [0, 1], zero outside the pairs.
        normalized_f: (M,) the min-max normalised f of each pair.
    """
    single = pred_ltrb.dim() == 2
    if single:
        pred_ltrb = pred_ltrb[None]
    num_images, num_locations = pred_ltrb.shape[:2]
    counts = [gt_boxes.shape[0]] if boxes_per_image is None else list(boxes_per_image)
    shape = (num_locations, num_classes) if single else (num_images, num_locations, num_classes)
    box_prob = pred_ltrb.new_zeros(num_images * num_locations * num_classes)
    gt_idx, loc_idx = pairs.gt_idx, pairs.loc_idx
    if gt_idx.numel() == 0:
        return box_prob.view(shape), pred_ltrb.new_zeros(0)
    device = gt_boxes.device
    pred_boxes = torch.cat([points - pred_ltrb[..., :2], points + pred_ltrb[..., 2:]], dim=-1)
    iou = pred_ltrb.new_zeros(num_images, num_locations)  # (N, L) IoU_max of every location
    start = 0
    for n, count in enumerate(counts):
        if count > 0:
            iou[n] = max_iou_over_gts(pred_boxes[n], gt_boxes[start : start + count])
        start += count
    box_image = torch.cat(
        [torch.full((c,), n, dtype=torch.long, device=device) for n, c in enumerate(counts)]
    )
    # In-place steps below: at 1000 objects M is about 1.5 M pairs, each (M,) temporary 6-12 MB.
    flat_loc = box_image.index_select(0, gt_idx).mul_(num_locations).add_(loc_idx)  # (M,)
    f = 1.0 / iou.view(-1).index_select(0, flat_loc).neg_().add_(1.0).clamp_(min=EPS)
    num_gt = gt_boxes.shape[0]
    f_min = f.new_zeros(num_gt).scatter_reduce(0, gt_idx, f, "amin", include_self=False)
    f_max = f.new_zeros(num_gt).scatter_reduce(0, gt_idx, f, "amax", include_self=False)
    f_min = f_min.index_select(0, gt_idx)
    # (f - f_min + EPS) / (f_max - f_min + EPS), > 0
    normalized_f = (f - f_min).add_(EPS)
    del f
    normalized_f.div_(f_max.index_select(0, gt_idx).sub_(f_min).add_(EPS))
    del f_min
    # Later object wins on (image, location, class) collisions: the highest object index of
    # each key, then that pair's value (amax into zeros: the only non-zero value per key).
    key = flat_loc.mul_(num_classes).add_(gt_classes.index_select(0, gt_idx))
    pair_gt = gt_idx.to(torch.int32)
    winner = torch.full_like(box_prob, -1, dtype=torch.int32).scatter_reduce(
        0, key, pair_gt, "amax"
    )
    is_winner = winner.index_select(0, key) == pair_gt
    del winner, pair_gt
    value = torch.where(is_winner, normalized_f, 0.0)
    box_prob = box_prob.scatter_reduce_(0, key, value, "amax")
    return box_prob.view(shape), normalized_f


def _bce(prob: Tensor, target: float) -> Tensor:
    """Elementwise ``F.binary_cross_entropy`` (log clamped at -100, finite gradients at 0 and
    1), in float32 with autocast disabled (it is not autocast-safe)."""
    with torch.autocast(device_type=prob.device.type, enabled=False):
        prob = prob.float()
        return F.binary_cross_entropy(prob, torch.full_like(prob, target), reduction="none")


def negative_bag_loss(prob: Tensor, gamma: float) -> Tensor:
    """Elementwise focal negative loss ``p^gamma * BCE(p, 0)`` on the weighted probability
    ``p = P(cls) * w-`` (paper Eq. 6; no alpha inside, as released)."""
    return prob.float() ** gamma * _bce(prob, 0.0)


def explicit_objectness_loss(obj_logits: Tensor, inside: Tensor) -> Tensor:
    """Mean BCE of the objectness logits against 1 inside any box, 0 elsewhere (paper Table 4
    "explicit-obj"; the paper gives no normaliser, the mean over locations is our choice).

    Args:
        obj_logits: (N, L) logits; inside: (N, L) float in {0, 1}.
    """
    return F.binary_cross_entropy_with_logits(obj_logits.float(), inside, reduction="mean")
