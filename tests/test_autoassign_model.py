"""AutoAssign as a Detectron2 model: config keys and validation, every config builds with the
released architecture, inference (score = cls x obj, no assignment code), the ablation switches
end to end on a tiny R-18, and the loss on 1 worker vs 2 gloo workers."""
import glob
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_autoassign_loss import GRIDS, STRIDES, Scene, make_instances, make_model, random_gts
from torch import nn

import autoassign.autoassign as aa_module
from anchor_free.backbone import compiled_ops_available
from anchor_free_app.config import get_project_cfg, setup_cfg
from anchor_free.meta_arch import build_point_generator
from autoassign import AutoAssign, CenterPrior
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone import Backbone
from detectron2.utils.events import EventStorage

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AA_CONFIGS = [os.path.join(REPO_ROOT, "configs", "Base-AutoAssign.yaml")] + sorted(
    glob.glob(os.path.join(REPO_ROOT, "configs", "AutoAssign", "*.yaml"))
)
DEMO_CONFIG = os.path.join(REPO_ROOT, "configs", "AutoAssign", "autoassign_R_18_FPN_demo.yaml")

# ------------------------------------------------------------------------------------------------
# Config keys, validation, every config
# ------------------------------------------------------------------------------------------------


def test_config_defaults_are_the_release():
    cfg = get_project_cfg().MODEL.AUTOASSIGN
    assert (cfg.PRIOR_PROB, cfg.BBOX_BIAS_INIT, cfg.TAU, cfg.LOC_LAMBDA) == (0.02, 4.0, 1 / 3, 5.0)
    assert (cfg.CENTER_PRIOR, cfg.CONFIDENCE, cfg.OBJECTNESS) == ("per_class", "joint", "implicit")
    assert (cfg.MU_INIT, cfg.SIGMA_INIT) == (0.0, 1.0)
    assert (cfg.FREEZE_MU, cfg.FREEZE_SIGMA) == (False, False)
    assert (cfg.USE_POS_WEIGHTS, cfg.USE_NEG_WEIGHTS, cfg.NORM_LOSS_WEIGHT) == (True, True, 0.75)
    assert (cfg.FOCAL_LOSS_ALPHA, cfg.FOCAL_LOSS_GAMMA) == (0.25, 2.0)
    assert (cfg.SCORE_THRESH_TEST, cfg.TOPK_CANDIDATES_TEST, cfg.NMS_THRESH_TEST) == (
        0.05, 1000, 0.6)
    # The release's inference_single_image: the min(1000, H x W) best pairs, then the threshold.
    assert (cfg.SCORE_THRESH_ON, cfg.TOPK_CANDIDATES_RULE) == ("cls_obj", "cvpods")


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("TAU", 0.0, r"TAU \(Python config: model.tau\) must be > 0, got 0.0"),
        ("SIGMA_INIT", -1.0,
         r"SIGMA_INIT \(Python config: model.center_prior.sigma_init\) must be > 0"),
        ("CENTER_PRIOR", "gauss",
         r"CENTER_PRIOR \(Python config: model.center_prior.mode\) must be one of .*'gauss'"),
        ("CONFIDENCE", "both",
         r"CONFIDENCE \(Python config: model.confidence\) must be one of .*got 'both'"),
        ("OBJECTNESS", "yes",
         r"OBJECTNESS \(Python config: model.objectness\) must be one of .*got 'yes'"),
        ("FOCAL_LOSS_ALPHA", 1.5,
         r"FOCAL_LOSS_ALPHA \(Python config: model.focal_loss_alpha\) must be in \[0, 1\], "
         r"got 1.5"),
        ("PRIOR_PROB", 0.0,
         r"PRIOR_PROB \(Python config: model.head.prior_prob\) must be in \(0, 1\), got 0.0"),
        ("LOC_LAMBDA", -5.0,
         r"LOC_LAMBDA \(Python config: model.loc_lambda\) must be >= 0, got -5.0"),
        ("IN_FEATURES", ["p3", "p9"],
         r"IN_FEATURES \(Python config: model.head_in_features\)=\['p3', 'p9'\] names \['p9'\]"),
    ],
)
def test_bad_config_values_name_key_and_value(key, value, message):
    cfg = setup_cfg(DEMO_CONFIG, ["MODEL.DEVICE", "cpu"], freeze=False)
    cfg.MODEL.AUTOASSIGN[key] = value
    with pytest.raises(ValueError, match=f"MODEL.AUTOASSIGN.{message}"):
        build_model(cfg)


@pytest.mark.parametrize("path", AA_CONFIGS, ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_every_config_loads_and_builds_the_released_architecture(path):
    cfg = setup_cfg(path, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"], freeze=False)
    assert cfg.MODEL.META_ARCHITECTURE == "AutoAssign"
    assert cfg.MODEL.FPN.TOP_BLOCK_IN_FEATURE == "res5"
    if any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE) and not compiled_ops_available():
        with pytest.raises(RuntimeError, match="DEFORM_ON_PER_STAGE.*compiled ops"):
            build_model(cfg)
        return
    model = build_model(cfg)
    assert isinstance(model, AutoAssign)
    # P6 from C5 as in the release (docs/design.md): the top block's input has the res5 channels.
    res5 = model.backbone.bottom_up.output_shape()["res5"].channels
    assert model.backbone.top_block.p6.in_channels == res5
    head = model.head
    assert head.cls_score.bias.detach().allclose(torch.tensor(-math.log(0.98 / 0.02)))
    assert head.bbox_pred.bias.detach().eq(4.0).all()
    assert head.quality is not None and head.quality.bias.detach().eq(0).all()
    assert head.quality_on_box_tower
    convs = [m for m in head.cls_tower if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is not None for c in convs)
    assert any(isinstance(m, nn.GroupNorm) for m in head.box_tower)
    assert float(model.point_generator.offset) == 0.0
    assert model.strides == [8, 16, 32, 64, 128]
    num_classes = cfg.MODEL.AUTOASSIGN.NUM_CLASSES
    assert model.center_prior.mu.shape == (num_classes, 2)
    assert model.center_prior.sigma.detach().eq(1.0).all()
    assert (model.test_score_thresh, model.test_topk_candidates, model.test_nms_thresh) == (
        0.05, 1000, 0.6)
    assert model.max_detections_per_image == 100
    # MODEL.AUTOASSIGN.TOPK_CANDIDATES_RULE: the release's, but mmdetection's for its model.
    mmdet = path.endswith("_mmdet.yaml")
    assert model.test_topk_candidates_rule == ("mmdet3" if mmdet else "cvpods")


# ------------------------------------------------------------------------------------------------
# Inference
# ------------------------------------------------------------------------------------------------


class _GridBackbone(Backbone):
    """Zero features of fixed grids; the head below ignores them."""

    def forward(self, x):
        n = x.shape[0]
        return {f"p{i}": torch.zeros(n, 1, h, w) for i, (h, w) in enumerate(GRIDS)}

    def output_shape(self):
        return {f"p{i}": ShapeSpec(channels=1, stride=s) for i, s in enumerate(STRIDES)}


class _FixedHead(nn.Module):
    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs
        # AnchorFreeHead's objectness branch, which AutoAssign checks against OBJECTNESS.
        self.quality = None if outputs[2] is None else nn.Identity()

    def forward(self, features):
        return self.outputs


def _fixed_outputs(with_obj=True):
    """Three candidates above the threshold and one whose raw cls (0.09) passes 0.05 but whose
    cls x obj (0.0405) does not. Level 0 point (24, 16), level 1 point (32, 16)."""
    cls = [torch.full((1, 3, h, w), -10.0) for h, w in GRIDS]
    ltrb = [torch.full((1, 4, h, w), 0.5) for h, w in GRIDS]
    obj = [torch.zeros(1, 1, h, w) for h, w in GRIDS]
    cls[0][0, 1, 2, 3], cls[0][0, 2, 2, 3], obj[0][0, 0, 2, 3] = 2.0, 0.5, 1.0
    ltrb[0][0, :, 2, 3] = torch.tensor([1.0, 1.5, 2.0, 0.5])  # box (16, 4, 40, 20)
    cls[1][0, 1, 1, 2], obj[1][0, 0, 1, 2] = 1.0, 1.0
    ltrb[1][0, :, 1, 2] = torch.tensor([0.625, 0.75, 1.0, 0.25])  # (22, 4, 48, 20), IoU 0.5625
    cls[2][0, 0, 1, 1], obj[2][0, 0, 1, 1] = math.log(0.09 / 0.91), -0.2
    return cls, ltrb, (obj if with_obj else None)


def _inference_model(with_obj=True, **kwargs):
    return AutoAssign(
        backbone=_GridBackbone(),
        head=_FixedHead(_fixed_outputs(with_obj)),
        head_in_features=["p0", "p1", "p2"],
        point_generator=build_point_generator(STRIDES, 0.0),
        center_prior=CenterPrior(3),
        num_classes=3,
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
        **kwargs,
    ).eval()


@pytest.fixture
def no_assignment(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("assignment / loss code ran at test time")

    for name in ("inbox_pairs", "positive_terms", "negative_box_prob", "localization_likelihood",
                 "negative_bag_loss", "center_offsets"):
        monkeypatch.setattr(aa_module, name, forbidden)
    monkeypatch.setattr(CenterPrior, "forward", forbidden)
    monkeypatch.setattr(AutoAssign, "forward_training", forbidden)


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_inference_fields_scores_boxes_and_class_aware_nms(no_assignment):
    model = _inference_model()
    with torch.no_grad():
        (out,) = model([{"image": torch.zeros(3, 64, 96), "height": 64, "width": 96}])
    inst = out["instances"]
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
    assert inst.image_size == (64, 96)
    # NMS 0.6 keeps the IoU-0.5625 box of the same class; class 2 at the same place is kept;
    # the 0.0405 candidate is below the threshold although its raw cls score is 0.09.
    expected_scores = [_sigmoid(2.0) * _sigmoid(1.0), _sigmoid(1.0) ** 2,
                       _sigmoid(0.5) * _sigmoid(1.0)]
    assert inst.scores.tolist() == pytest.approx(expected_scores, rel=1e-6)
    assert inst.pred_classes.tolist() == [1, 1, 2]
    expected_boxes = torch.tensor([[16.0, 4.0, 40.0, 20.0], [22.0, 4.0, 48.0, 20.0],
                                   [16.0, 4.0, 40.0, 20.0]])
    assert torch.allclose(inst.pred_boxes.tensor, expected_boxes)
    # With NMS 0.5 the second box goes.
    model.test_nms_thresh = 0.5
    with torch.no_grad():
        (out,) = model([{"image": torch.zeros(3, 64, 96)}])
    assert out["instances"].scores.tolist() == pytest.approx(
        [expected_scores[0], expected_scores[2]], rel=1e-6)


def test_inference_without_objectness_uses_cls_only(no_assignment):
    model = _inference_model(with_obj=False, objectness="none")
    with torch.no_grad():
        (out,) = model([{"image": torch.zeros(3, 64, 96)}])
    inst = out["instances"]
    # Raw cls scores now; the 0.09 candidate passes the threshold.
    assert inst.scores.tolist() == pytest.approx(
        [_sigmoid(2.0), _sigmoid(1.0), _sigmoid(0.5), 0.09], rel=1e-5)


def test_inference_scores_are_a_product_without_square_root():
    model = _inference_model()
    cls = torch.tensor([[0.3, -1.0]])
    obj = torch.tensor([[-0.5]])
    expected = torch.sigmoid(cls) * torch.sigmoid(obj)
    assert torch.equal(model.inference_scores(cls, obj), expected)
    assert torch.equal(model.inference_scores(cls, None), torch.sigmoid(cls))


# ------------------------------------------------------------------------------------------------
# Ablation switches end to end on a tiny R-18
# ------------------------------------------------------------------------------------------------

SWITCHES = {
    "release": [],
    "center-none": ["MODEL.AUTOASSIGN.CENTER_PRIOR", "none"],
    "center-fixed-mu1-sigma2": ["MODEL.AUTOASSIGN.CENTER_PRIOR", "fixed",
                                "MODEL.AUTOASSIGN.MU_INIT", 1.0,
                                "MODEL.AUTOASSIGN.SIGMA_INIT", 2.0],
    "center-shared": ["MODEL.AUTOASSIGN.CENTER_PRIOR", "shared"],
    "freeze-mu": ["MODEL.AUTOASSIGN.FREEZE_MU", True],
    "conf-cls-only": ["MODEL.AUTOASSIGN.CONFIDENCE", "cls_only"],
    "conf-loc-only": ["MODEL.AUTOASSIGN.CONFIDENCE", "loc_only"],
    "conf-none": ["MODEL.AUTOASSIGN.CONFIDENCE", "none"],
    "obj-none": ["MODEL.AUTOASSIGN.OBJECTNESS", "none"],
    "obj-explicit": ["MODEL.AUTOASSIGN.OBJECTNESS", "explicit"],
    "no-weights-baseline": ["MODEL.AUTOASSIGN.USE_POS_WEIGHTS", False,
                            "MODEL.AUTOASSIGN.USE_NEG_WEIGHTS", False,
                            "MODEL.AUTOASSIGN.CENTER_PRIOR", "none"],
    "tau1-p6-from-p5": ["MODEL.AUTOASSIGN.TAU", 1.0, "MODEL.FPN.TOP_BLOCK_IN_FEATURE", "p5"],
}
# A smaller model than the demo one, to keep these runs cheap.
TINY = ["MODEL.DEVICE", "cpu", "MODEL.AUTOASSIGN.NUM_CLASSES", 3,
        "MODEL.AUTOASSIGN.NUM_CONVS", 1]


@pytest.mark.parametrize("name", SWITCHES)
def test_ablation_switches_train_and_infer(name):
    torch.manual_seed(0)
    cfg = setup_cfg(DEMO_CONFIG, TINY + SWITCHES[name], freeze=False)
    model = build_model(cfg)
    aa = cfg.MODEL.AUTOASSIGN
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    mu_learnable = aa.CENTER_PRIOR in ("shared", "per_class") and not aa.FREEZE_MU
    assert ("center_prior.mu" in trainable) == mu_learnable
    if aa.CENTER_PRIOR != "none":
        rows = 3 if aa.CENTER_PRIOR == "per_class" else 1
        assert model.center_prior.mu.shape == (rows, 2)
        assert model.center_prior.mu.detach().eq(aa.MU_INIT).all()
    assert (model.head.quality is None) == (aa.OBJECTNESS == "none")
    batch = [
        {"image": torch.rand(3, 32, 48) * 255,
         "instances": make_instances([[4, 6, 40, 30], [20, 12, 46, 31], [9, 9, 10, 10]],
                                     [0, 2, 1], (32, 48))},
        {"image": torch.rand(3, 32, 48) * 255,
         "instances": make_instances(torch.zeros(0, 4), [], (32, 48))},
    ]
    model.train()
    with EventStorage():
        losses = model(batch)
    expected = {"loss_pos", "loss_neg", "loss_norm"} | (
        {"loss_obj"} if aa.OBJECTNESS == "explicit" else set())
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.head.bbox_pred.weight.grad is not None
    assert model.head.cls_score.weight.grad.abs().sum() > 0
    if mu_learnable:
        assert model.center_prior.mu.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": batch[0]["image"], "height": 64, "width": 96}])
    inst = out["instances"]
    assert inst.image_size == (64, 96) and len(inst) <= 100
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}


# ------------------------------------------------------------------------------------------------
# 1 worker vs 2 gloo workers
# ------------------------------------------------------------------------------------------------

NUM_IMAGES = 4


def _distributed_problem():
    """Four images with very different object counts, so per-worker normalisers differ."""
    scene = Scene(NUM_IMAGES, 4, GRIDS, seed=11)
    gts = random_gts(2, 4, seed=11, num_boxes=8) + random_gts(2, 4, seed=12, num_boxes=1)
    prior = CenterPrior(4)
    with torch.no_grad():
        prior.mu.copy_(torch.linspace(-0.5, 0.5, 8).reshape(4, 2))
    return scene, gts, make_model(4, STRIDES, center_prior=prior)


def _losses_and_prior_grads(scene, gts, model, images):
    predictions = [[t[images] for t in part] for part in scene.predictions()]
    features = [f[images] for f in scene.features]
    losses = model.forward_training(None, features, predictions, [gts[i] for i in images])
    grads = torch.autograd.grad(sum(losses.values()),
                                [model.center_prior.mu, model.center_prior.sigma])
    return {k: v.item() for k, v in losses.items()}, grads


def _distributed_worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        scene, gts, model = _distributed_problem()
        images = list(range(rank * 2, rank * 2 + 2))
        losses, grads = _losses_and_prior_grads(scene, gts, model, images)
        grads = [g.clone() for g in grads]
        for g in grads:  # what DDP does with the gradients
            dist.all_reduce(g)
            g /= world_size
        torch.save({"losses": losses, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_workers_give_the_single_process_loss(tmp_path):
    scene, gts, model = _distributed_problem()
    single, single_grads = _losses_and_prior_grads(scene, gts, model, list(range(NUM_IMAGES)))
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2,
             join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for key, value in single.items():
        # DDP averages the workers' gradients: the effective loss is the workers' mean.
        mean = sum(r["losses"][key] for r in results) / 2
        assert mean == pytest.approx(value, rel=1e-5), key
    assert results[0]["losses"]["loss_pos"] != pytest.approx(results[1]["losses"]["loss_pos"])
    for r in results:
        for a, b in zip(r["grads"], single_grads):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
