"""Every Pseudo-IoU config loads, has the settings of the row it reproduces, and builds on CPU
(DCN ones fail at build time with the reason when Detectron2 has no compiled ops)."""
import glob
import os

import pytest

from anchor_free.backbone import compiled_ops_available
from anchor_free_app.config import setup_cfg
from detectron2.modeling import build_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")
PIOU_CONFIGS = [os.path.join(CONFIG_DIR, "Base-PseudoIoU.yaml")] + sorted(
    glob.glob(os.path.join(CONFIG_DIR, "PseudoIoU", "*.yaml"))
)

COCO_EPOCH = 7330  # iterations per COCO train2017 epoch at 16 images
VOC_EPOCH = 1035  # iterations per VOC 07+12 trainval epoch at 16 images
RELEASE = dict(assigner="pseudo_iou", thresh=0.4, inclusive=False, reg="giou", ctr=True, ctr_w=True)
PAPER_IOU = dict(inclusive=True, reg="iou", ctr=False, ctr_w=False)
COCO_1X = dict(iters=12 * COCO_EPOCH, steps=(8 * COCO_EPOCH, 11 * COCO_EPOCH), warmup=500)
COCO_2X = dict(iters=24 * COCO_EPOCH, steps=(16 * COCO_EPOCH, 22 * COCO_EPOCH))
PAPER_2X = dict(COCO_2X, warmup=1500)
MS = dict(min_size=(640, 800), sampling="choice", flip="horizontal")
MS_RANGE = dict(min_size=(640, 800), sampling="range", flip="none")
SS = dict(min_size=(800,), flip="horizontal")

# config name -> settings of the table row it reproduces (projects/PseudoIoU/README.md)
EXPECTED = {
    "Base-PseudoIoU": dict(RELEASE, **COCO_1X, **MS, depth=50, dcn=False),
    "pseudo_iou_R_50_FPN_1x": dict(RELEASE, **COCO_1X, **MS, depth=50, dcn=False),
    "pseudo_iou_R_101_FPN_1x": dict(RELEASE, **COCO_1X, **MS, depth=101, dcn=False),
    "pseudo_iou_R_101_FPN_DCN_2x": dict(RELEASE, **COCO_2X, **MS, depth=101, dcn=True, warmup=500),
    "af_baseline_R_50_FPN_2x_ss": dict(
        PAPER_IOU, **PAPER_2X, **SS, assigner="all_in_box", depth=50
    ),
    "pseudo_iou_R_50_FPN_2x_ss_iou": dict(
        PAPER_IOU, **PAPER_2X, **SS, assigner="pseudo_iou", thresh=0.4
    ),
    "pseudo_iou_R_50_FPN_2x_ss_giou": dict(
        PAPER_IOU, **PAPER_2X, **SS, assigner="pseudo_iou", thresh=0.4, **{"reg": "giou"}
    ),
    "pseudo_iou_R_50_FPN_2x_ss_giou_ctr": dict(
        PAPER_IOU, **PAPER_2X, **SS, assigner="pseudo_iou", **{"reg": "giou", "ctr": True}
    ),
    "af_baseline_R_101_FPN_2x_ms": dict(
        RELEASE, **PAPER_2X, **MS_RANGE, **{"assigner": "all_in_box", "inclusive": True}, depth=101
    ),
    "pseudo_iou_R_101_FPN_2x_ms": dict(
        RELEASE, **PAPER_2X, **MS_RANGE, **{"inclusive": True}, depth=101, dcn=False
    ),
    "pseudo_iou_R_101_FPN_DCN_2x_ms": dict(
        RELEASE, **PAPER_2X, **MS_RANGE, **{"inclusive": True}, dcn=True
    ),
    "pseudo_iou_X_101_32x8d_FPN_DCN_2x_ms": dict(dcn=True, groups=32, width=8, **PAPER_2X),
    "pseudo_iou_X_101_64x4d_FPN_DCN_2x_ms": dict(dcn=True, groups=64, width=4, **PAPER_2X),
    "pseudo_iou_R_101_FPN_voc": dict(
        PAPER_IOU,
        assigner="pseudo_iou",
        thresh=0.4,
        depth=101,
        classes=20,
        min_size=(600,),
        iters=12 * VOC_EPOCH,
        steps=(8 * VOC_EPOCH, 10 * VOC_EPOCH),
        warmup=500,
    ),
    "af_baseline_R_101_FPN_voc": dict(
        PAPER_IOU, assigner="all_in_box", classes=20, iters=12 * VOC_EPOCH
    ),
    "pseudo_iou_R_18_FPN_demo": dict(RELEASE, depth=18, classes=4, iters=1500),
    "af_baseline_R_18_FPN_demo": dict(assigner="all_in_box", depth=18, classes=4, iters=1500),
}
# The configs that evaluate the authors' converted checkpoints are their training configs.
for _name in ("pseudo_iou_R_50_FPN_1x", "pseudo_iou_R_101_FPN_1x", "pseudo_iou_R_101_FPN_DCN_2x"):
    EXPECTED[_name + "_mmdet"] = EXPECTED[_name]


def config_name(path):
    return os.path.splitext(os.path.basename(path))[0]


def test_every_config_has_an_expected_row():
    assert sorted(config_name(p) for p in PIOU_CONFIGS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", PIOU_CONFIGS, ids=config_name)
def test_config_settings_and_build(path):
    cfg = setup_cfg(path, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"], freeze=False)
    expected = EXPECTED[config_name(path)]
    pcfg = cfg.MODEL.PSEUDO_IOU
    actual = dict(
        assigner=pcfg.ASSIGNER,
        thresh=pcfg.PSEUDO_IOU_THRESH,
        inclusive=pcfg.THRESH_INCLUSIVE,
        reg=pcfg.REG_LOSS,
        ctr=pcfg.CENTERNESS,
        ctr_w=pcfg.CENTERNESS_WEIGHTED_REG_LOSS,
        iters=cfg.SOLVER.MAX_ITER,
        steps=tuple(cfg.SOLVER.STEPS),
        warmup=cfg.SOLVER.WARMUP_ITERS,
        min_size=tuple(cfg.INPUT.MIN_SIZE_TRAIN),
        sampling=cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
        flip=cfg.INPUT.RANDOM_FLIP,
        depth=cfg.MODEL.RESNETS.DEPTH,
        dcn=any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE),
        groups=cfg.MODEL.RESNETS.NUM_GROUPS,
        width=cfg.MODEL.RESNETS.WIDTH_PER_GROUP,
        classes=pcfg.NUM_CLASSES,
    )
    assert {k: actual[k] for k in expected} == expected

    # Shared by every row: the release's head, points, ranges, inference and optimiser.
    assert cfg.MODEL.META_ARCHITECTURE == "PseudoIoU"
    assert cfg.MODEL.FPN.TOP_BLOCK_IN_FEATURE == "p5"
    assert pcfg.POINT_OFFSET == 0.5 and pcfg.USE_SCALE_RANGES and pcfg.TIE_BREAK == "min_area"
    assert (pcfg.SCORE_THRESH_TEST, pcfg.TOPK_CANDIDATES_TEST, pcfg.NMS_THRESH_TEST) == (
        0.05,
        1000,
        0.5,
    )
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 100
    assert (cfg.SOLVER.BIAS_LR_FACTOR, cfg.SOLVER.WEIGHT_DECAY_BIAS) == (2.0, 0.0)
    assert cfg.SOLVER.WARMUP_METHOD == "constant"
    assert cfg.SOLVER.WARMUP_FACTOR == pytest.approx(1 / 3)
    clip = cfg.SOLVER.CLIP_GRADIENTS
    assert clip.ENABLED and clip.CLIP_TYPE == "full_model" and clip.NORM_TYPE == 2.0
    if "demo" not in path:
        assert clip.CLIP_VALUE == 35.0 and cfg.SOLVER.IMS_PER_BATCH == 16
        assert cfg.SOLVER.BASE_LR == 0.01
        assert pcfg.SIZES_OF_INTEREST == [64, 128, 256, 512] and pcfg.NUM_CONVS == 4
    if expected.get("dcn"):
        assert cfg.MODEL.RESNETS.DEFORM_MODULATED and cfg.MODEL.RESNETS.DEFORM_NUM_GROUPS == 4
        if not compiled_ops_available():
            with pytest.raises(RuntimeError, match="deformable convolution.*compiled ops"):
                build_model(cfg)
            return
    model = build_model(cfg)
    assert type(model).__name__ == "PseudoIoU"
    assert model.head.quality is not None if pcfg.CENTERNESS else model.head.quality is None
