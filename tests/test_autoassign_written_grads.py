"""AutoAssign's hand-written gradients (``_LocalizationLikelihood``: exp(-lambda GIoU loss);
``_GaussianPrior``: the center prior) and the in-place ``inbox_pairs`` against the plain autograd
/ dense definitions they replace, on random scenes: no pairs, 1000 boxes, tiny and huge boxes,
zero predictions (ReLU'd distances), ties, several chunks."""
import pytest
import torch

from anchor_free.inbox import grid_points, inbox_pairs
from anchor_free.losses import giou_loss
from autoassign.center_prior import CenterPrior, _GaussianPrior, gaussian_prior
from autoassign.loss import _LocalizationLikelihood, _ltrb_to_boxes, localization_likelihood

GRIDS_800 = [(100, 167), (50, 84), (25, 42), (13, 21), (7, 11)]  # 800x1333, strides 8-128
STRIDES = [8, 16, 32, 64, 128]


def reference_likelihood(pred_ltrb, target_ltrb, loc_lambda):
    """The previous ``localization_likelihood``: autograd through ``giou_loss``."""
    loss = giou_loss(_ltrb_to_boxes(pred_ltrb), _ltrb_to_boxes(target_ltrb))
    return torch.exp(-loc_lambda * loss)


def random_boxes(num, seed, height=800, width=1333, tiny=False, huge=False):
    g = torch.Generator().manual_seed(seed)
    lo, hi = (0.5, 4.0) if tiny else ((600.0, 2000.0) if huge else (8.0, 800.0))
    size = torch.exp(torch.empty(num, 2).uniform_(torch.log(torch.tensor(lo)).item(),
                                                  torch.log(torch.tensor(hi)).item(), generator=g))
    center = torch.rand(num, 2, generator=g) * torch.tensor([width, height])
    return torch.cat([center - size / 2, center + size / 2], dim=1)


def scene_pairs(num_boxes, seed, **kw):
    """In-box pairs of an 800x1333 image and random (ReLU'd, ~10% zero) predictions."""
    boxes = random_boxes(num_boxes, seed, **kw)
    pairs = inbox_pairs(boxes, GRIDS_800, STRIDES, 0.0)
    g = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(pairs.ltrb.shape, generator=g)
    pred = torch.relu(pairs.ltrb * torch.exp(0.5 * noise) - 0.1 * pairs.ltrb.mean())
    return pred, pairs.ltrb


def _compare_likelihood(pred, target, loc_lambda=5.0, seed=0):
    weight = torch.rand(pred.shape[0], generator=torch.Generator().manual_seed(seed))
    ref_in, new_in = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    ref = reference_likelihood(ref_in, target, loc_lambda)
    new = localization_likelihood(new_in, target, loc_lambda)
    assert torch.equal(ref, new)  # the same forward operations
    (ref * weight).sum().backward()
    (new * weight).sum().backward()
    assert torch.allclose(new_in.grad, ref_in.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("num_boxes,kw", [(0, {}), (1, {}), (20, {}), (1000, {}),
                                          (300, {"tiny": True}), (50, {"huge": True})])
def test_localization_likelihood_equals_autograd_giou(num_boxes, kw):
    pred, target = scene_pairs(num_boxes, seed=num_boxes, **kw)
    if num_boxes == 1000:
        assert pred.shape[0] > _LocalizationLikelihood.CHUNK  # several chunks
    _compare_likelihood(pred, target)


def test_localization_likelihood_edge_predictions():
    target = torch.tensor([[3.0, 4.0, 5.0, 6.0]]).repeat(6, 1)
    pred = torch.tensor([
        [0.0, 0.0, 0.0, 0.0],  # empty predicted box: no intersection
        [0.0, 0.0, 5.0, 6.0],  # zero width on one side
        [3.0, 4.0, 5.0, 6.0],  # exact match: ties everywhere
        [3.0, 1.0, 9.0, 6.0],  # partial ties
        [1e4, 1e4, 1e4, 1e4],  # huge
        [1e-3, 2e-3, 1e-3, 4e-3],  # tiny
    ])
    _compare_likelihood(pred, target, loc_lambda=5.0)


def test_localization_likelihood_chunks(monkeypatch):
    pred, target = scene_pairs(100, seed=3)
    whole = localization_likelihood(pred.clone().requires_grad_(True), target, 5.0)
    monkeypatch.setattr(_LocalizationLikelihood, "CHUNK", 1000)
    _compare_likelihood(pred, target)
    assert torch.equal(localization_likelihood(pred, target, 5.0), whole.detach())


def init_like_pairs(num, seed):
    """(object, location) pairs as at the start of training: predictions of the release's
    initial 4 strides per side (``BBOX_BIAS_INIT`` 4.0, 1% noise) at strides 8-128, objects'
    sides log-uniform from 0.5 to 1100 px (so many predictions enclose a much smaller object)."""
    g = torch.Generator().manual_seed(seed)
    stride = 2.0 ** torch.randint(3, 8, (num, 1), generator=g)
    pred = 4.0 * stride * torch.exp(0.01 * torch.randn(num, 4, generator=g))
    target = torch.exp(torch.empty(num, 4).uniform_(-0.7, 7.0, generator=g))
    return pred, target


def init_like_grid_pairs(num_boxes, seed):
    """The in-box pairs of an 800x1333 image, each predicting the release's initial 4 strides
    per side (1% noise)."""
    pairs = inbox_pairs(random_boxes(num_boxes, seed), GRIDS_800, STRIDES, 0.0)
    noise = torch.randn(pairs.ltrb.shape, generator=torch.Generator().manual_seed(seed + 1))
    return 4.0 * pairs.stride[:, None] * torch.exp(0.01 * noise), pairs.ltrb


def _likelihood_grad(fn, pred, target, weight, dtype):
    leaf = pred.to(dtype).clone().requires_grad_(True)
    (fn(leaf, target.to(dtype), 5.0) * weight.to(dtype)).sum().backward()
    return leaf.grad.double()


def _pair_errors(grad, reference):
    """(P,) normwise relative error of each pair's (4,) gradient."""
    return (grad - reference).norm(dim=1) / reference.norm(dim=1)


@pytest.mark.parametrize("scene", ["init-like pairs", "init-like grid"])
def test_float32_gradient_as_accurate_as_float32_autograd(scene):
    """Against float64 autograd through ``giou_loss``: the written-out float32 gradient is no
    further off, pair by pair, than float32 autograd itself on the same inputs (the largest and
    the 99.9th percentile of the per-pair normwise relative errors). A prediction enclosing a
    much smaller object is where the order of the cancelling terms shows (the release's initial
    boxes: 4 strides per side); on the whole-scene norm, dominated by the pairs with large
    gradients, both stay at float32 rounding (about 3e-7). In float64 the written-out gradient
    is autograd's to 1e-10 per pair."""
    if scene == "init-like pairs":
        pred, target = init_like_pairs(20000, seed=0)
    else:
        pred, target = init_like_grid_pairs(100, seed=1)
    weight = torch.rand(pred.shape[0], generator=torch.Generator().manual_seed(2))
    reference = _likelihood_grad(reference_likelihood, pred, target, weight, torch.float64)
    autograd32 = _pair_errors(
        _likelihood_grad(reference_likelihood, pred, target, weight, torch.float32), reference)
    written32 = _pair_errors(
        _likelihood_grad(localization_likelihood, pred, target, weight, torch.float32), reference)
    assert written32.max() <= autograd32.max()
    assert written32.quantile(0.999) <= autograd32.quantile(0.999)
    written64 = _pair_errors(
        _likelihood_grad(localization_likelihood, pred, target, weight, torch.float64), reference)
    assert written64.max() < 1e-10


@pytest.mark.parametrize("mode", ["per_class", "shared", "fixed"])
@pytest.mark.parametrize("num_pairs", [0, 1, 5000, 200000])
def test_gaussian_prior_equals_autograd(mode, num_pairs):
    g = torch.Generator().manual_seed(num_pairs)
    prior = CenterPrior(80, mode=mode, mu_init=0.3, sigma_init=1.5)
    if prior.mu.requires_grad:
        with torch.no_grad():
            prior.mu.add_(torch.randn(prior.mu.shape, generator=g) * 0.2)
            prior.sigma.mul_(torch.rand(prior.sigma.shape, generator=g) + 0.5)
    offsets = torch.randn(num_pairs, 2, generator=g) * 8  # far offsets underflow to 0
    labels = torch.randint(0, 80, (num_pairs,), generator=g)
    weight = torch.rand(num_pairs, generator=g)
    rows = labels if prior.mu.shape[0] > 1 else torch.zeros_like(labels)
    ref = gaussian_prior(offsets, prior.mu.index_select(0, rows), prior.sigma.index_select(0, rows))
    params = [p for p in (prior.mu, prior.sigma) if p.requires_grad]
    ref_grads = torch.autograd.grad((ref * weight).sum(), params) if params else []
    new = prior(offsets, labels)
    assert torch.equal(new, ref)
    new_grads = torch.autograd.grad((new * weight).sum(), params) if params else []
    for a, b in zip(new_grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_gaussian_prior_frozen_mu_has_no_gradient():
    prior = CenterPrior(4, mode="per_class", freeze_mu=True)
    out = prior(torch.randn(10, 2), torch.randint(0, 4, (10,)))
    out.sum().backward()
    assert prior.mu.grad is None and prior.sigma.grad is not None


@pytest.mark.parametrize("num_boxes,kw", [(0, {}), (1000, {}), (200, {"tiny": True}),
                                          (30, {"huge": True})])
def test_inbox_pairs_equal_dense_definition(num_boxes, kw):
    grids = [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]  # 256x320
    boxes = random_boxes(num_boxes, seed=num_boxes + 7, height=256, width=320, **kw)
    points = grid_points(grids, STRIDES, 0.0)
    pairs = inbox_pairs(boxes, grids, STRIDES, 0.0, points=points)
    dense = torch.stack([points[None, :, 0] - boxes[:, 0:1], points[None, :, 1] - boxes[:, 1:2],
                         boxes[:, 2:3] - points[None, :, 0], boxes[:, 3:4] - points[None, :, 1]],
                        dim=2)
    g_idx, l_idx = torch.nonzero(dense.min(dim=2).values > 0, as_tuple=True)
    assert torch.equal(pairs.gt_idx, g_idx) and torch.equal(pairs.loc_idx, l_idx)
    assert torch.equal(pairs.ltrb, dense[g_idx, l_idx])
    strides = torch.cat([torch.full((h * w,), float(s)) for (h, w), s in zip(grids, STRIDES)])
    assert torch.equal(pairs.stride, strides[l_idx])
