"""Mixed precision: both detectors under ``torch.autocast`` on the CPU, in float16 and bfloat16,
with every loss switch (Pseudo-IoU: ``REG_LOSS`` giou / iou, centerness on / off, each rule of
the paper's Table 2; AutoAssign: each ``CONFIDENCE``, ``OBJECTNESS`` and ``CENTER_PRIOR``).

What runs in float32 (as the releases: mmdet's ``scale(bbox_pred).float()`` in the head and
``@force_fp32`` on ``loss`` / ``get_bboxes``): the head's box output, every loss and the
post-processing, with autocast disabled. Detectron2's ``AMPTrainer`` needs CUDA, so the models
are run under ``torch.autocast`` directly, as ``AMPTrainer.run_step`` does (forward under
autocast, backward on the loss scaled by its ``GradScaler``).

Tolerances, about 3x the largest difference to float32 measured on the same inputs and
weights by ``python tests/test_amp.py --seeds 4`` (4 weight/input seeds x the 17 switches
below, the whole model under autocast in both dtypes; the tests use seed 0):

==================================================  ==========  ==========  ===============
quantity (vs float32)                               bfloat16    float16     tolerance
==================================================  ==========  ==========  ===============
loss term, relative                                 4.9e-3      2.4e-3      1.5e-2 / 7.5e-3
head (+ center prior) gradient, relative L2         8.3e-2      4.4e-2      0.25 / 0.15
whole-model gradient, relative L2 (not compared)    0.34        0.13        finite only
cls / quality probability (eval), absolute          3.6e-3      3.8e-4      1e-2 / 1.5e-3
box distances ltrb (eval), strides, absolute        2.8e-2      3.2e-3      0.1 / 1e-2
==================================================  ==========  ==========  ===============

float16 with AMPTrainer's initial loss scale 2**16 gave finite gradients in every case.
"""
import argparse
import copy
from typing import Dict, List, Tuple
from unittest import mock

import pytest
import torch
from torch import Tensor, nn

from autoassign import AutoAssign
from autoassign import autoassign as aa_module
from autoassign.config import add_autoassign_config
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from pseudo_iou import PseudoIoU
from pseudo_iou.testing import tiny_pseudo_iou_cfg

DTYPES = [torch.bfloat16, torch.float16]
# Relative error of each loss term, relative L2 error of the gradient of all parameters, and
# absolute error of the head's probabilities (sigmoid of cls and quality logits); see above.
LOSS_RTOL = {torch.bfloat16: 1.5e-2, torch.float16: 7.5e-3}
GRAD_RTOL = {torch.bfloat16: 0.25, torch.float16: 0.15}
PROB_ATOL = {torch.bfloat16: 1e-2, torch.float16: 1.5e-3}
LTRB_ATOL = {torch.bfloat16: 0.1, torch.float16: 1e-2}  # box distances, in strides
# AMPTrainer's GradScaler starts at 2**16 and backs off where the scaled float16 gradients
# overflow (skipping that step); float16 gradients underflow without it. bfloat16: no scaling.
LOSS_SCALE = {torch.bfloat16: 1.0, torch.float16: 2.0**16}
BACK_OFF = 2.0**4  # per retry here (GradScaler: 2 per skipped step)

PIOU_SWITCHES = {
    "release": [],
    "iou": ["REG_LOSS", "iou"],
    "no-centerness": ["CENTERNESS", False],
    "paper-iou-plain": ["REG_LOSS", "iou", "CENTERNESS", False,
                        "CENTERNESS_WEIGHTED_REG_LOSS", False],
    "all-in-box": ["ASSIGNER", "all_in_box"],
    "centerness-rule": ["ASSIGNER", "centerness"],
    "scaled-box-rule": ["ASSIGNER", "scaled_box"],
}  # fmt: skip
AA_SWITCHES = {
    "release": [],
    "conf-cls-only": ["CONFIDENCE", "cls_only"],
    "conf-loc-only": ["CONFIDENCE", "loc_only"],
    "conf-none": ["CONFIDENCE", "none"],
    "obj-none": ["OBJECTNESS", "none"],
    "obj-explicit": ["OBJECTNESS", "explicit"],
    "prior-none": ["CENTER_PRIOR", "none"],
    "prior-fixed": ["CENTER_PRIOR", "fixed"],
    "prior-shared": ["CENTER_PRIOR", "shared"],
    "no-weights": ["USE_POS_WEIGHTS", False, "USE_NEG_WEIGHTS", False, "CENTER_PRIOR", "none"],
}  # fmt: skip
CASES = [("PseudoIoU", n) for n in PIOU_SWITCHES] + [("AutoAssign", n) for n in AA_SWITCHES]
# The whole model under autocast: every switch in bfloat16; in float16 the released settings
# only, as float16 convolutions are slow on CPUs (about 20x float32 here). Every switch runs in
# float16 on the head outputs (test_losses_under_autocast_on_rounded_head_outputs).
FULL_MODEL_CASES = [(a, n, torch.bfloat16) for a, n in CASES] + [
    ("PseudoIoU", "release", torch.float16),
    ("AutoAssign", "release", torch.float16),
]


def tiny_autoassign_cfg() -> CfgNode:
    """The AutoAssign counterpart of ``tiny_pseudo_iou_cfg``: R-18, 64-channel FPN P3-P7 with P6
    from C5 (release), one conv per tower, 3 classes."""
    cfg = tiny_pseudo_iou_cfg()
    add_autoassign_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "AutoAssign"
    cfg.MODEL.FPN.TOP_BLOCK_IN_FEATURE = "res5"
    cfg.MODEL.AUTOASSIGN.NUM_CLASSES = 3
    cfg.MODEL.AUTOASSIGN.NUM_CONVS = 1
    return cfg


def build(arch: str, name: str, seed: int = 0):
    """The tiny model of ``arch`` with switch ``name``; weights from ``seed``."""
    if arch == "PseudoIoU":
        cfg, node, switches = tiny_pseudo_iou_cfg(), "PSEUDO_IOU", PIOU_SWITCHES[name]
    else:
        cfg, node, switches = tiny_autoassign_cfg(), "AUTOASSIGN", AA_SWITCHES[name]
    for key, value in zip(switches[::2], switches[1::2]):
        cfg.MODEL[node][key] = value
    # Unit-variance inputs, as the demo configs (from scratch).
    cfg.MODEL.PIXEL_MEAN = [103.53, 116.28, 123.675]
    cfg.MODEL.PIXEL_STD = [57.375, 57.12, 58.395]
    torch.manual_seed(seed)
    model = build_model(cfg)
    if arch == "PseudoIoU" and cfg.MODEL.PSEUDO_IOU.REG_LOSS == "iou":
        # Boxes of one stride at init. With the release's zero bias, ReLU leaves boxes of zero
        # size, where -log IoU (IoU clamped at 1e-6) has a gradient that jumps between 0 and
        # ~1e6 as a rounding moves an output across 0: head gradient 140% off float32 in
        # bfloat16 (float32 with every weight times a random 1 +- 2**-9: 7%); with bias 1:
        # 3.9% (float32 perturbed: 1.8%). Seed 0, "paper-iou-plain".
        nn.init.constant_(model.head.bbox_pred.bias, 1.0)
    return model


def make_batch(seed: int = 0, height: int = 64, width: int = 96) -> List[Dict]:
    """Two noise images: three boxes of three classes (one of 8 x 8 px) and one large box."""
    g = torch.Generator().manual_seed(seed)

    def instances(boxes, classes):
        inst = Instances((height, width))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.gt_classes = torch.tensor(classes)
        return inst

    return [
        {"image": torch.rand(3, height, width, generator=g) * 255,
         "instances": instances([[4, 6, 40, 50], [30, 20, 90, 60], [50, 5, 58, 13]], [0, 2, 1])},
        {"image": torch.rand(3, height, width, generator=g) * 255,
         "instances": instances([[10, 10, 70, 60]], [1])},
    ]  # fmt: skip


def losses_and_grads(model, batch, dtype=None) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """One training step's forward (under autocast in ``dtype``, or float32 for None) and
    backward of the summed losses, scaled as ``AMPTrainer``'s GradScaler does: from
    ``LOSS_SCALE`` down by ``BACK_OFF`` until the float16 gradients are finite. Returns the
    losses and the unscaled gradients ``{"head": ..., "all": ..., "scale": ...}``: of the head
    (and the AutoAssign center prior), of all parameters (each flattened), the scale used."""
    model.train()
    model.zero_grad(set_to_none=True)
    with EventStorage(), torch.autocast("cpu", dtype=dtype or torch.bfloat16,
                                        enabled=dtype is not None):
        losses = model(batch)
    total = sum(losses.values())
    scale = LOSS_SCALE.get(dtype, 1.0)
    while True:
        model.zero_grad(set_to_none=True)
        (total * scale).backward(retain_graph=True)
        named = [
            (n, p.grad.flatten() / scale) for n, p in model.named_parameters() if p.grad is not None
        ]
        grads = {
            "head": torch.cat([g for n, g in named if not n.startswith("backbone.")]),
            "all": torch.cat([g for _, g in named]),
            "scale": torch.tensor(scale),
        }
        if dtype != torch.float16 or scale <= 1.0 or bool(torch.isfinite(grads["all"]).all()):
            return {k: v.detach() for k, v in losses.items()}, grads
        scale /= BACK_OFF


def head_probabilities(model, batch, dtype=None) -> Tuple[Tensor, Tensor, Tensor]:
    """Eval-mode head outputs of ``batch``: sigmoid(cls), sigmoid(quality), ltrb (strides),
    each of all levels concatenated, as float32."""
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16,
                                         enabled=dtype is not None):
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        cls, ltrb, quality = model.head([features[f] for f in model.head_in_features])
    flat = lambda xs: torch.cat([x.float().flatten(1) for x in xs], dim=1)  # noqa: E731
    return flat(cls).sigmoid(), flat(quality).sigmoid(), flat(ltrb)


@pytest.fixture(scope="module")
def float32_reference(one_torch_thread):
    """Float32 losses and gradients of each case, computed once."""
    cache = {}

    def get(arch, name):
        if (arch, name) not in cache:
            cache[(arch, name)] = losses_and_grads(build(arch, name), make_batch())
        return cache[(arch, name)]

    return get


# ------------------------------------------------------------------------------------------------
# Training under autocast
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,name,dtype", FULL_MODEL_CASES, ids=str)
def test_training_under_autocast_matches_float32(arch, name, dtype, float32_reference):
    """Every loss float32, finite and within LOSS_RTOL of the float32 loss; every gradient
    finite; the gradient of the head (and center prior) within GRAD_RTOL (relative L2) of the
    float32 one. The whole model's gradient is not compared: that of the random-weight
    backbone is too sensitive to any rounding (in float32, multiplying every weight by a random
    1 +- 2**-9 moved it by 21%, the head's by 3%; Pseudo-IoU, seed 0)."""
    ref_losses, ref_grads = float32_reference(arch, name)
    losses, grads = losses_and_grads(build(arch, name), make_batch(), dtype)
    assert set(losses) == set(ref_losses)
    for key, value in losses.items():
        assert value.dtype == torch.float32, key
        assert torch.isfinite(value), key
        torch.testing.assert_close(value, ref_losses[key], rtol=LOSS_RTOL[dtype], atol=1e-6,
                                   msg=lambda m: f"{arch} {name} {key}: {m}")
    assert torch.isfinite(grads["all"]).all()
    assert grads["all"].shape == ref_grads["all"].shape
    rel = float((grads["head"] - ref_grads["head"]).norm() / ref_grads["head"].norm())
    assert rel <= GRAD_RTOL[dtype], (arch, name, rel)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("arch,name", CASES)
def test_losses_under_autocast_on_rounded_head_outputs(arch, name, dtype, one_torch_thread):
    """Every switch, both dtypes: the head outputs (float32, no backbone in the graph) rounded
    to ``dtype`` as autocast's head gives them (cls and quality; ltrb stays float32), then
    ``forward_training`` under autocast: float32 losses within LOSS_RTOL of those of the
    unrounded outputs, finite gradients within GRAD_RTOL (relative L2) of theirs."""
    model, batch = build(arch, name), make_batch()
    model.train()
    with torch.no_grad():
        images = model.preprocess_image(batch)
        features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
        cls, ltrb, quality = model.head(features)
    gts = [x["instances"] for x in batch]

    def run(low_precision):
        rounded = lambda xs: [  # noqa: E731
            (x.to(dtype) if low_precision else x).detach().requires_grad_() for x in xs]
        leaves = (rounded(cls), [x.detach().requires_grad_() for x in ltrb],
                  None if quality is None else rounded(quality))
        with EventStorage(), torch.autocast("cpu", dtype=dtype, enabled=low_precision):
            losses = model.forward_training(images, features, leaves, gts)
        flat = [x for group in leaves if group is not None for x in group]
        grads = torch.autograd.grad(sum(losses.values()), flat, allow_unused=True)
        grads = torch.cat([g.float().flatten() for g in grads if g is not None])
        return {k: v.detach() for k, v in losses.items()}, grads

    ref_losses, ref_grads = run(False)
    losses, grads = run(True)
    for key, value in losses.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), key
        torch.testing.assert_close(value, ref_losses[key], rtol=LOSS_RTOL[dtype], atol=1e-6)
    assert torch.isfinite(grads).all()
    assert float((grads - ref_grads).norm() / ref_grads.norm()) <= GRAD_RTOL[dtype]


def test_pseudo_iou_losses_run_in_float32_without_autocast(one_torch_thread):
    """``PseudoIoU.losses`` receives float32 head outputs and runs with autocast off (the
    GIoU loss failed with "Index put requires the source and destination dtypes match")."""
    model = build("PseudoIoU", "release")
    seen = []
    original = PseudoIoU.losses

    def spy(self, points, cls_logits, box_ltrb, ctr_logits, targets):
        seen.append({x.dtype for x in cls_logits + box_ltrb + ctr_logits})
        seen.append(torch.is_autocast_enabled("cpu"))
        return original(self, points, cls_logits, box_ltrb, ctr_logits, targets)

    # bfloat16: the casts and the disabled autocast do not depend on the dtype.
    with mock.patch.object(PseudoIoU, "losses", spy):
        losses, _ = losses_and_grads(model, make_batch(), torch.bfloat16)
    assert seen == [{torch.float32}, False]
    assert {v.dtype for v in losses.values()} == {torch.float32}


def test_autoassign_losses_run_in_float32_without_autocast(one_torch_thread):
    """The AutoAssign weighting and losses see float32 probabilities and boxes, autocast off."""
    model = build("AutoAssign", "release")
    seen = []
    original = aa_module.positive_terms

    def spy(**kwargs):
        seen.append(({kwargs[k].dtype for k in ("p_cls", "p_loc", "prior")},
                     torch.is_autocast_enabled("cpu")))
        return original(**kwargs)

    with mock.patch.object(aa_module, "positive_terms", spy):
        losses_and_grads(model, make_batch(), torch.bfloat16)
    assert seen and all(call == ({torch.float32}, False) for call in seen)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_head_box_output_is_float32_under_autocast(dtype, one_torch_thread):
    model = build("PseudoIoU", "release")
    features = [torch.randn(1, 64, 4, 4) for _ in range(5)]
    with torch.autocast("cpu", dtype=dtype):
        cls, ltrb, ctr = model.head(features)
    assert {x.dtype for x in cls + ctr} == {dtype}
    assert {x.dtype for x in ltrb} == {torch.float32}
    assert all(bool((x >= 0).all()) for x in ltrb)


# ------------------------------------------------------------------------------------------------
# Inference under autocast
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("arch", ["PseudoIoU", "AutoAssign"])
def test_head_outputs_under_autocast_match_float32(arch, dtype, one_torch_thread):
    """What inference ranks and decodes: class and quality probabilities within PROB_ATOL,
    ltrb within LTRB_ATOL strides, of float32 (eval mode, same weights and images)."""
    model = build(arch, "release")
    batch = make_batch()
    ref = head_probabilities(model, batch)
    low = head_probabilities(model, batch, dtype)
    for name, a, b in zip(("cls", "quality"), low[:2], ref[:2]):
        assert float((a - b).abs().max()) <= PROB_ATOL[dtype], (name, dtype)
    assert float((low[2] - ref[2]).abs().max()) <= LTRB_ATOL[dtype], ("ltrb", dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("arch", ["PseudoIoU", "AutoAssign"])
def test_post_processing_under_autocast_gives_float32_detections(arch, dtype, one_torch_thread):
    """Head outputs as autocast gives them (cls and quality logits in ``dtype``, ltrb in
    float32) post-processed under autocast: the float32 detections of the same rounded logits,
    exactly (the post-processing runs in float32, autocast off); the model's full eval forward
    under autocast returns float32 Instances."""
    model = build(arch, "release").eval()
    model.test_score_thresh = 0.0  # the untrained head scores ~0.01-0.02 everywhere
    batch = make_batch()
    with torch.no_grad():
        images = model.preprocess_image(batch)
        features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
        cls, ltrb, quality = model.head(features)
    rounded = ([x.to(dtype) for x in cls], ltrb, [x.to(dtype) for x in quality])
    as_float = ([x.float() for x in rounded[0]], ltrb, [x.float() for x in rounded[2]])
    with torch.no_grad():
        expected = model.forward_inference(images, features, as_float)
        with torch.autocast("cpu", dtype=dtype):
            got = model.forward_inference(images, features, rounded)
    for e, g in zip(expected, got):
        assert len(e) > 0
        assert g.scores.dtype == g.pred_boxes.tensor.dtype == torch.float32
        assert torch.equal(g.scores, e.scores) and torch.equal(g.pred_classes, e.pred_classes)
        assert torch.equal(g.pred_boxes.tensor, e.pred_boxes.tensor)
    if dtype == torch.bfloat16:  # the whole eval forward (float16 convolutions: slow on CPU)
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            (full,) = model([{"image": batch[0]["image"]}])
        inst = full["instances"]
        assert inst.scores.dtype == inst.pred_boxes.tensor.dtype == torch.float32
        assert torch.isfinite(inst.pred_boxes.tensor).all() and len(inst) > 0


# ------------------------------------------------------------------------------------------------
# The measurement behind the tolerances: python tests/test_amp.py [--seeds 8]
# ------------------------------------------------------------------------------------------------


def measure(seeds: int) -> Dict[str, Dict[str, float]]:
    """Largest differences to float32 over ``seeds`` weight/input seeds and every case."""
    worst = {str(d): {"loss": 0.0, "grad": 0.0, "grad_all": 0.0, "prob": 0.0, "ltrb": 0.0,
                      "min_scale": 2.0**16} for d in DTYPES}
    for seed in range(seeds):
        for arch, name in CASES:
            model, batch = build(arch, name, seed), make_batch(seed)
            ref_losses, ref_grads = losses_and_grads(model, batch)
            for dtype in DTYPES:
                w = worst[str(dtype)]
                losses, grads = losses_and_grads(model, batch, dtype)
                for key, ref in ref_losses.items():
                    rel = float((losses[key] - ref).abs() / ref.abs().clamp(min=1e-6))
                    w["loss"] = max(w["loss"], rel)
                for key, out in (("head", "grad"), ("all", "grad_all")):
                    rel = (grads[key] - ref_grads[key]).norm() / ref_grads[key].norm()
                    w[out] = max(w[out], float(rel))
                assert torch.isfinite(grads["all"]).all(), (arch, name, seed, dtype)
                w["min_scale"] = min(w["min_scale"], float(grads["scale"]))
            if name == "release":
                ref = head_probabilities(copy.deepcopy(model), batch)
                for dtype in DTYPES:
                    w = worst[str(dtype)]
                    low = head_probabilities(copy.deepcopy(model), batch, dtype)
                    for a, b in zip(low[:2], ref[:2]):
                        w["prob"] = max(w["prob"], float((a - b).abs().max()))
                    w["ltrb"] = max(w["ltrb"], float((low[2] - ref[2]).abs().max()))
        print(f"after seed {seed}: {worst}", flush=True)
    return worst


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=measure.__doc__)
    parser.add_argument("--seeds", type=int, default=8)
    torch.set_num_threads(1)
    measure(parser.parse_args().seeds)
