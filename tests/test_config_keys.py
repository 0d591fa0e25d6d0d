"""Every detector key of the yacs system (``MODEL.PSEUDO_IOU.*``, ``MODEL.AUTOASSIGN.*``) has the
Python-config attribute docs/configs.md names: set to a non-default value in each system, both
build the same model; a bad value gets the same error, naming both spellings, from both."""
import os
import re

import pytest
from common import REPO_ROOT
from test_python_configs import load_twins, module_settings

from anchor_free_app.config import build_model_from_config, get_project_cfg

TABLE = os.path.join(REPO_ROOT, "docs", "configs.md")
PIOU_DEMO = "PseudoIoU/pseudo_iou_R_18_FPN_demo.py"
AA_DEMO = "AutoAssign/autoassign_R_18_FPN_demo.py"

# yacs key -> (yacs value, the Python-config overrides that say the same). Each changes the
# model: the demo configs' defaults are the releases'.
ALTERNATIVES = {
    "MODEL.PSEUDO_IOU.NUM_CLASSES": (5, ["model.num_classes=5"]),
    "MODEL.PSEUDO_IOU.IN_FEATURES": (["p3", "p4", "p5"], [
        "model.head_in_features=[p3,p4,p5]",
        "model.head.input_shape=[{channels:64},{channels:64},{channels:64}]",
        "model.point_generator.strides=[8,16,32]",
        "model.assigner.size_ranges.sizes_of_interest=[32,64]"]),
    "MODEL.PSEUDO_IOU.NUM_CONVS": (1, ["model.head.num_convs=1"]),
    "MODEL.PSEUDO_IOU.NORM": ("", ["model.head.norm=''"]),
    "MODEL.PSEUDO_IOU.PRIOR_PROB": (0.02, ["model.head.prior_prob=0.02"]),
    "MODEL.PSEUDO_IOU.FOCAL_LOSS_ALPHA": (0.5, ["model.focal_loss_alpha=0.5"]),
    "MODEL.PSEUDO_IOU.FOCAL_LOSS_GAMMA": (1.5, ["model.focal_loss_gamma=1.5"]),
    "MODEL.PSEUDO_IOU.POINT_OFFSET": (0.0, ["model.point_generator.offset=0.0"]),
    "MODEL.PSEUDO_IOU.INSIDE_STRICT": (False, ["model.assigner.inside_strict=False"]),
    "MODEL.PSEUDO_IOU.USE_SCALE_RANGES": (False, ["model.assigner.size_ranges=null"]),
    "MODEL.PSEUDO_IOU.SIZES_OF_INTEREST": (
        [48, 96, 192, 384], ["model.assigner.size_ranges.sizes_of_interest=[48,96,192,384]"]),
    "MODEL.PSEUDO_IOU.TIE_BREAK": ("max_pseudo_iou", ["model.assigner.tie_break=max_pseudo_iou"]),
    "MODEL.PSEUDO_IOU.ASSIGNER": ("centerness", ["model.assigner.assigner=centerness"]),
    "MODEL.PSEUDO_IOU.PSEUDO_IOU_THRESH": (0.5, ["model.assigner.pseudo_iou_thresh=0.5"]),
    "MODEL.PSEUDO_IOU.THRESH_INCLUSIVE": (True, ["model.assigner.thresh_inclusive=True"]),
    "MODEL.PSEUDO_IOU.CENTERNESS_THRESH": (0.3, ["model.assigner.centerness_thresh=0.3"]),
    "MODEL.PSEUDO_IOU.SCALED_BOX_FACTOR": (0.5, ["model.assigner.scaled_box_factor=0.5"]),
    "MODEL.PSEUDO_IOU.REG_LOSS": ("iou", ["model.reg_loss_type=iou"]),
    "MODEL.PSEUDO_IOU.REG_LOSS_WEIGHT": (2.0, ["model.reg_loss_weight=2.0"]),
    "MODEL.PSEUDO_IOU.CENTERNESS": (False, ["model.head.use_quality=False"]),
    "MODEL.PSEUDO_IOU.CENTERNESS_WEIGHTED_REG_LOSS": (
        False, ["model.centerness_weighted_reg_loss=False"]),
    "MODEL.PSEUDO_IOU.SCORE_THRESH_TEST": (0.1, ["model.test_score_thresh=0.1"]),
    "MODEL.PSEUDO_IOU.TOPK_CANDIDATES_TEST": (500, ["model.test_topk_candidates=500"]),
    "MODEL.PSEUDO_IOU.TOPK_CANDIDATES_RULE": (
        "detectron2", ["model.test_topk_candidates_rule=detectron2"]),
    "MODEL.PSEUDO_IOU.NMS_THRESH_TEST": (0.6, ["model.test_nms_thresh=0.6"]),
    "MODEL.AUTOASSIGN.NUM_CLASSES": (5, ["model.num_classes=5"]),
    "MODEL.AUTOASSIGN.IN_FEATURES": (["p3", "p4", "p5"], [
        "model.head_in_features=[p3,p4,p5]",
        "model.head.input_shape=[{channels:64},{channels:64},{channels:64}]",
        "model.point_generator.strides=[8,16,32]"]),
    "MODEL.AUTOASSIGN.NUM_CONVS": (1, ["model.head.num_convs=1"]),
    "MODEL.AUTOASSIGN.NORM": ("", ["model.head.norm=''"]),
    "MODEL.AUTOASSIGN.PRIOR_PROB": (0.01, ["model.head.prior_prob=0.01"]),
    "MODEL.AUTOASSIGN.BBOX_BIAS_INIT": (2.0, ["model.head.bbox_bias_init=2.0"]),
    "MODEL.AUTOASSIGN.CENTER_PRIOR": ("shared", ["model.center_prior.mode=shared"]),
    "MODEL.AUTOASSIGN.MU_INIT": (0.5, ["model.center_prior.mu_init=0.5"]),
    "MODEL.AUTOASSIGN.SIGMA_INIT": (2.0, ["model.center_prior.sigma_init=2.0"]),
    "MODEL.AUTOASSIGN.FREEZE_MU": (True, ["model.center_prior.freeze_mu=True"]),
    "MODEL.AUTOASSIGN.FREEZE_SIGMA": (True, ["model.center_prior.freeze_sigma=True"]),
    "MODEL.AUTOASSIGN.CONFIDENCE": ("cls_only", ["model.confidence=cls_only"]),
    "MODEL.AUTOASSIGN.OBJECTNESS": (
        "none", ["model.objectness=none", "model.head.use_quality=False"]),
    "MODEL.AUTOASSIGN.TAU": (0.5, ["model.tau=0.5"]),
    "MODEL.AUTOASSIGN.LOC_LAMBDA": (3.0, ["model.loc_lambda=3.0"]),
    "MODEL.AUTOASSIGN.USE_POS_WEIGHTS": (False, ["model.use_pos_weights=False"]),
    "MODEL.AUTOASSIGN.USE_NEG_WEIGHTS": (False, ["model.use_neg_weights=False"]),
    "MODEL.AUTOASSIGN.NORM_LOSS_WEIGHT": (1.0, ["model.norm_loss_weight=1.0"]),
    "MODEL.AUTOASSIGN.FOCAL_LOSS_ALPHA": (0.5, ["model.focal_loss_alpha=0.5"]),
    "MODEL.AUTOASSIGN.FOCAL_LOSS_GAMMA": (1.5, ["model.focal_loss_gamma=1.5"]),
    "MODEL.AUTOASSIGN.SCORE_THRESH_TEST": (0.1, ["model.test_score_thresh=0.1"]),
    "MODEL.AUTOASSIGN.TOPK_CANDIDATES_TEST": (500, ["model.test_topk_candidates=500"]),
    "MODEL.AUTOASSIGN.TOPK_CANDIDATES_RULE": ("mmdet3", ["model.test_topk_candidates_rule=mmdet3"]),
    "MODEL.AUTOASSIGN.NMS_THRESH_TEST": (0.5, ["model.test_nms_thresh=0.5"]),
    "MODEL.AUTOASSIGN.SCORE_THRESH_ON": ("cls", ["model.score_thresh_on=cls"]),
    "MODEL.AUTOASSIGN.CLIP_BOXES_BEFORE_NMS": (True, ["model.clip_boxes_before_nms=True"]),
    "MODEL.FPN.TOP_BLOCK_IN_FEATURE": ("res5", [
        "model.backbone.top_block.in_feature=res5", "model.backbone.top_block.in_channels=512"]),
    "MODEL.PIXEL_MEAN": ([100.0, 110.0, 120.0], ["model.pixel_mean=[100.0,110.0,120.0]"]),
    "TEST.DETECTIONS_PER_IMAGE": (50, ["model.max_detections_per_image=50"]),
}  # fmt: skip

# yacs key -> a value its check rejects
BAD_VALUES = {
    "MODEL.PSEUDO_IOU.PSEUDO_IOU_THRESH": 1.5, "MODEL.PSEUDO_IOU.ASSIGNER": "atss",
    "MODEL.PSEUDO_IOU.REG_LOSS": "smooth_l1", "MODEL.PSEUDO_IOU.POINT_OFFSET": 1.0,
    "MODEL.PSEUDO_IOU.NUM_CONVS": -1, "MODEL.PSEUDO_IOU.SCORE_THRESH_TEST": 1.0,
    "MODEL.PSEUDO_IOU.SIZES_OF_INTEREST": [64, 128],
    "MODEL.AUTOASSIGN.TAU": 0.0, "MODEL.AUTOASSIGN.SIGMA_INIT": -1.0,
    "MODEL.AUTOASSIGN.CENTER_PRIOR": "gauss", "MODEL.AUTOASSIGN.PRIOR_PROB": 0.0,
    "MODEL.AUTOASSIGN.SCORE_THRESH_ON": "obj", "MODEL.AUTOASSIGN.FOCAL_LOSS_ALPHA": 1.5,
    "MODEL.AUTOASSIGN.IN_FEATURES": ["p3", "p9"],
}  # fmt: skip


def documented_keys() -> dict:
    """yacs key -> Python attribute, from docs/configs.md's tables (one key per row)."""
    with open(TABLE) as f:
        rows = re.findall(r"^\| `([A-Z_.]+)` \| `([^`]+)`", f.read(), flags=re.M)
    return dict(rows)


def _demo_for(key: str) -> str:
    return AA_DEMO if key.startswith("MODEL.AUTOASSIGN") else PIOU_DEMO


def _constant_init(model) -> dict:
    """The parameters a config sets to constants (classifier and regressor biases, mu, sigma)."""
    names = ("cls_score.bias", "bbox_pred.bias", "center_prior.mu", "center_prior.sigma")
    return {n: p.flatten().tolist() for n, p in model.named_parameters() if n.endswith(names)}


def _python_value(value) -> str:
    if isinstance(value, str):
        return value
    return str(value)


def test_every_detector_key_is_documented_with_its_python_attribute():
    cfg = get_project_cfg()
    keys = {f"MODEL.PSEUDO_IOU.{k}" for k in cfg.MODEL.PSEUDO_IOU}
    keys |= {f"MODEL.AUTOASSIGN.{k}" for k in cfg.MODEL.AUTOASSIGN}
    documented = documented_keys()
    assert keys <= set(documented), sorted(keys - set(documented))
    assert keys <= set(ALTERNATIVES), sorted(keys - set(ALTERNATIVES))
    for key, (_, overrides) in ALTERNATIVES.items():
        if key in documented:  # the documented attribute is the one the test sets
            assert any(o.startswith(documented[key] + "=") for o in overrides), key


@pytest.mark.parametrize("key", sorted(ALTERNATIVES))
def test_a_non_default_value_builds_the_same_model_in_both_systems(key):
    yacs_value, python_overrides = ALTERNATIVES[key]
    yacs_opts = [key, str(yacs_value)]
    if key == "MODEL.PSEUDO_IOU.IN_FEATURES":
        yacs_opts += ["MODEL.PSEUDO_IOU.SIZES_OF_INTEREST", "[32, 64]"]
    yacs_cfg, python_cfg = load_twins(_demo_for(key), yacs_opts, python_overrides)
    yacs_model = build_model_from_config(yacs_cfg)
    python_model = build_model_from_config(python_cfg)
    default_yacs, _ = load_twins(_demo_for(key))
    default_model = build_model_from_config(default_yacs)
    settings = module_settings(yacs_model), _constant_init(yacs_model)
    assert (module_settings(python_model), _constant_init(python_model)) == settings
    # the value took effect
    assert settings != (module_settings(default_model), _constant_init(default_model))


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_a_bad_value_gets_the_same_error_from_both_systems(key):
    value = BAD_VALUES[key]
    python_key = documented_keys()[key].split(" ")[0]
    yacs_cfg, _ = load_twins(_demo_for(key), [key, str(value)])
    with pytest.raises(ValueError) as yacs_error:
        build_model_from_config(yacs_cfg)
    _, python_cfg = load_twins(_demo_for(key), (), [f"{python_key}={_python_value(value)}"])
    with pytest.raises(ValueError) as python_error:
        build_model_from_config(python_cfg)
    assert str(python_error.value) == str(yacs_error.value)
    assert key in str(yacs_error.value)
    assert python_key.split(".")[-1] in str(yacs_error.value)
