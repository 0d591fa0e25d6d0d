"""Pseudo-IoU inference as released (``PIOUHead._get_bboxes`` + mmdet's ``multiclass_nms`` in
SHI-Labs/Pseudo-IoU-for-Anchor-Free-Object-Detection): boxes clipped to the image before NMS,
``model.test_score_thresh`` the class-probability threshold read at every call, per level the
``test_topk_candidates`` locations of best score when there are more (mmdetection 2's
``nms_pre``). AutoAssign keeps its release's order (no clipping before NMS) and candidate cap
(``min(test_topk_candidates, H x W)`` pairs); the other rules of
``anchor_free.meta_arch.TOPK_CANDIDATES_RULES``.

The head outputs are hand-built, so every expected value below is worked out by hand."""
import math
from unittest import mock

import pytest
import torch
from torch import nn

from anchor_free.meta_arch import build_point_generator
from autoassign import AutoAssign, CenterPrior
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone import Backbone
from pseudo_iou import PseudoIoU
from pseudo_iou.testing import tiny_pseudo_iou_cfg

# A 64 x 64 padded batch, P3-P7 grids of the point generator.
GRIDS = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
STRIDES = [8, 16, 32, 64, 128]
NEG = math.log(1e-4 / (1 - 1e-4))  # class probability 1e-4


def logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.fixture(scope="module")
def model(one_torch_thread):
    torch.manual_seed(0)
    return build_model(tiny_pseudo_iou_cfg()).eval()


def blank_outputs(num_classes: int = 3):
    """Head outputs per level: every class at 1e-4, ltrb 1 stride, centerness ~1."""
    cls = [torch.full((1, num_classes, h, w), NEG) for h, w in GRIDS]
    ltrb = [torch.ones(1, 4, h, w) for h, w in GRIDS]
    ctr = [torch.full((1, 1, h, w), 20.0) for h, w in GRIDS]
    return cls, ltrb, ctr


def infer(model, outputs, image_size=(64, 64)):
    features = [torch.zeros(1, 1, h, w) for h, w in GRIDS]
    images = mock.Mock(image_sizes=[image_size])
    with torch.no_grad():
        return model.forward_inference(images, features, outputs)[0]


def edge_outputs():
    """Class 0 at two P3 points of row 3 (y = 28), the first one reaching past the left edge:
    point (4, 28), ltrb (5.5, 2, 2, 2) strides -> box (-40, 12, 20, 44), cls 0.9;
    point (12, 28), ltrb (1.5, 2, 1, 2) strides -> box (0, 12, 20, 44), cls 0.8.
    Unclipped IoU = 640 / 1920 = 1/3 < 0.5: both survive NMS. Clipped to the image, the first
    box is (0, 12, 20, 44), the second one itself: IoU 1, the second is suppressed.
    Class 1 at point (60, 60) (row 7, col 7), ltrb (1, 1, 2, 2) -> box (52, 52, 76, 76), cls 0.7:
    past the right and bottom edges."""
    cls, ltrb, ctr = blank_outputs()
    cls[0][0, 0, 3, 0] = logit(0.9)
    ltrb[0][0, :, 3, 0] = torch.tensor([5.5, 2.0, 2.0, 2.0])
    cls[0][0, 0, 3, 1] = logit(0.8)
    ltrb[0][0, :, 3, 1] = torch.tensor([1.5, 2.0, 1.0, 2.0])
    cls[0][0, 1, 7, 7] = logit(0.7)
    ltrb[0][0, :, 7, 7] = torch.tensor([1.0, 1.0, 2.0, 2.0])
    return cls, ltrb, ctr


def test_boxes_past_the_image_edge_are_clipped_before_nms(model):
    assert model.clip_boxes_before_nms
    result = infer(model, edge_outputs())
    # The clipped (-40, 12, 20, 44) suppresses (0, 12, 20, 44) of the same class.
    assert result.pred_classes.tolist() == [0, 1]
    torch.testing.assert_close(result.scores, torch.tensor([0.9, 0.7]), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        result.pred_boxes.tensor, torch.tensor([[0.0, 12.0, 20.0, 44.0], [52.0, 52.0, 64.0, 64.0]])
    )


def test_boxes_are_clipped_to_the_image_not_to_the_padded_batch(model):
    """An image of 50 (h) x 60 (w) in a 64 x 64 padded batch: boxes are clipped to x <= 60,
    y <= 50, so the class-1 box (52, 52, 76, 76) becomes the empty (52, 50, 60, 50) (kept here
    as by mmdet's NMS; Detectron2's ``detector_postprocess`` drops empty boxes afterwards)."""
    result = infer(model, edge_outputs(), image_size=(50, 60))
    boxes = result.pred_boxes.tensor
    assert float(boxes[:, 0::2].max()) <= 60.0 and float(boxes[:, 1::2].max()) <= 50.0
    torch.testing.assert_close(boxes[-1], torch.tensor([52.0, 50.0, 60.0, 50.0]))


def test_without_clipping_both_boxes_survive(model):
    """The same outputs with clipping off (Detectron2's RetinaNet / FCOS order): IoU 1/3 at
    NMS, so both class-0 boxes survive, unclipped."""
    with mock.patch.object(model, "clip_boxes_before_nms", False):
        result = infer(model, edge_outputs())
    assert result.pred_classes.tolist() == [0, 0, 1]
    torch.testing.assert_close(
        result.pred_boxes.tensor,
        torch.tensor([[-40.0, 12.0, 20.0, 44.0], [0.0, 12.0, 20.0, 44.0], [52.0, 52.0, 76.0, 76.0]]),
    )


class _GridBackbone(Backbone):
    """Zero features of the GRIDS; the fixed head below ignores them."""

    def forward(self, x):
        return {f"p{i}": torch.zeros(x.shape[0], 1, h, w) for i, (h, w) in enumerate(GRIDS)}

    def output_shape(self):
        return {f"p{i}": ShapeSpec(channels=1, stride=s) for i, s in enumerate(STRIDES)}


class _FixedHead(nn.Module):
    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs
        # AnchorFreeHead's quality (objectness) branch, which AutoAssign checks for.
        self.quality = None if outputs[2] is None else nn.Identity()

    def forward(self, features):
        return self.outputs


def autoassign(outputs, **kwargs):
    """An AutoAssign of the GRIDS whose head returns ``outputs`` (points at cell centres here,
    as for Pseudo-IoU, to reuse the same outputs; the centerness outputs are its objectness)."""
    return AutoAssign(
        backbone=_GridBackbone(),
        head=_FixedHead(outputs),
        head_in_features=[f"p{i}" for i in range(len(GRIDS))],
        point_generator=build_point_generator(STRIDES, 0.5),
        center_prior=CenterPrior(3),
        num_classes=3,
        test_nms_thresh=0.5,
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
        **kwargs,
    ).eval()


def test_autoassign_keeps_its_release_order_no_clip_before_nms():
    """The AutoAssign release decodes without clipping and clips after NMS: the same two
    class-0 boxes both survive (objectness logit 20: scores equal the class probabilities)."""
    cls, ltrb, ctr = edge_outputs()
    aa = autoassign((cls, ltrb, ctr))
    assert not aa.clip_boxes_before_nms
    result = infer(aa, (cls, ltrb, ctr))
    assert result.pred_classes.tolist() == [0, 0, 1]
    assert float(result.pred_boxes.tensor[0, 0]) == -40.0


def threshold_outputs():
    """P3 (row, col): class 0 at (1, 1) cls 0.9 ctr 0.01 -> score 0.009 (kept: the threshold is
    on the class probability); class 1 at (5, 5) cls 0.06 ctr 0.5 -> 0.03; class 2 at (6, 6)
    cls 0.04 ctr ~1 -> 0.04 (dropped at 0.05 although it scores higher than 0.03)."""
    cls, ltrb, ctr = blank_outputs()
    cls[0][0, 0, 1, 1], ctr[0][0, 0, 1, 1] = logit(0.9), logit(0.01)
    cls[0][0, 1, 5, 5], ctr[0][0, 0, 5, 5] = logit(0.06), 0.0
    cls[0][0, 2, 6, 6] = logit(0.04)
    return cls, ltrb, ctr


def test_test_score_thresh_is_the_class_probability_threshold(model):
    assert model.test_score_thresh == 0.05  # MODEL.PSEUDO_IOU.SCORE_THRESH_TEST
    result = infer(model, threshold_outputs())
    assert result.pred_classes.tolist() == [1, 0]
    torch.testing.assert_close(result.scores, torch.tensor([0.03, 0.009]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "thresh,classes,scores",
    [
        (0.07, [0], [0.009]),  # cls 0.06 now dropped
        (0.03, [2, 1, 0], [0.04, 0.03, 0.009]),  # cls 0.04 now kept, score 0.04
        (0.95, [], []),
    ],
)
def test_test_score_thresh_set_at_run_time(model, thresh, classes, scores):
    with mock.patch.object(model, "test_score_thresh", thresh):
        result = infer(model, threshold_outputs())
    assert result.pred_classes.tolist() == classes
    torch.testing.assert_close(result.scores, torch.tensor(scores), atol=1e-5, rtol=0)


def test_score_thresh_from_the_config_key():
    cfg = tiny_pseudo_iou_cfg()
    cfg.MODEL.PSEUDO_IOU.SCORE_THRESH_TEST = 0.3
    assert build_model(cfg).test_score_thresh == 0.3


def test_detectron2_topk_ranks_the_kept_pairs_by_score(model):
    """Rule "detectron2", ``test_topk_candidates`` = 1: per level, the best (point, class) pair
    among those whose class probability passes the threshold, ranked by cls x centerness: on P3
    the pair with score 0.03 wins over 0.009 (whose class probability 0.9 is higher)."""
    cls, ltrb, ctr = threshold_outputs()
    cls[1][0, 2, 0, 0] = logit(0.5)  # one pair on P4 too: point (8, 8), score 0.5
    with mock.patch.multiple(model, test_topk_candidates=1, test_topk_candidates_rule="detectron2"):
        result = infer(model, (cls, ltrb, ctr))
    assert result.pred_classes.tolist() == [2, 1]
    torch.testing.assert_close(result.scores, torch.tensor([0.5, 0.03]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "topk,classes,scores",
    [
        # P3's best location by cls x centerness is (6, 6), 0.04 (cls 0.04: below the threshold),
        # the only one kept: nothing of P3 passes. P4's (0, 0) is its best location.
        (1, [2], [0.5]),
        # (6, 6) and (5, 5) (0.03, cls 0.06 kept); (1, 1) (0.009) is not among the 2 best.
        (2, [2, 1], [0.5, 0.03]),
        # P3 and P4 have no more locations than 64: no cap, every pair above the threshold.
        (64, [2, 1, 0], [0.5, 0.03, 0.009]),
    ],
)
def test_release_topk_keeps_the_best_locations_then_thresholds(model, topk, classes, scores):
    """Rule "mmdet2" (the release's default, mmdetection 2.11 ``nms_pre``): if a level has more
    than ``test_topk_candidates`` locations, the locations of best cls x centerness over the
    classes, whatever their class probability, then the threshold on the class probability."""
    assert model.test_topk_candidates_rule == "mmdet2"  # MODEL.PSEUDO_IOU.TOPK_CANDIDATES_RULE
    cls, ltrb, ctr = threshold_outputs()
    cls[1][0, 2, 0, 0] = logit(0.5)
    with mock.patch.object(model, "test_topk_candidates", topk):
        result = infer(model, (cls, ltrb, ctr))
    assert result.pred_classes.tolist() == classes
    torch.testing.assert_close(result.scores, torch.tensor(scores), atol=1e-5, rtol=0)


def test_release_topk_caps_locations_not_pairs(model):
    """Rule "mmdet2": every pair above the threshold of a kept location is a candidate, however
    many: with ``test_topk_candidates`` = 1, the two classes of P3's best location survive."""
    cls, ltrb, ctr = blank_outputs()
    cls[0][0, 0, 2, 2], cls[0][0, 1, 2, 2] = logit(0.9), logit(0.8)
    cls[0][0, 2, 5, 5] = logit(0.7)  # another location: not among the 1 best
    with mock.patch.object(model, "test_topk_candidates", 1):
        result = infer(model, (cls, ltrb, ctr))
    assert result.pred_classes.tolist() == [0, 1]
    with mock.patch.multiple(model, test_topk_candidates=1, test_topk_candidates_rule="detectron2"):
        assert infer(model, (cls, ltrb, ctr)).pred_classes.tolist() == [0]


def test_autoassign_release_keeps_at_most_a_pair_per_location():
    """Rule "cvpods" (AutoAssign's default, the release's ``inference_single_image``): the
    ``min(test_topk_candidates, H x W)`` best pairs, then the threshold. P7 has one location:
    of its three classes above the threshold, only the best is a candidate; Detectron2's rule
    keeps the three (class-aware NMS does not suppress across classes)."""
    cls, ltrb, ctr = blank_outputs()
    cls[4][0, :, 0, 0] = torch.tensor([logit(0.9), logit(0.8), logit(0.7)])
    aa = autoassign((cls, ltrb, ctr))
    assert aa.test_topk_candidates_rule == "cvpods" and aa.test_topk_candidates == 1000
    result = infer(aa, (cls, ltrb, ctr))
    assert result.pred_classes.tolist() == [0]
    torch.testing.assert_close(result.scores, torch.tensor([0.9]), atol=1e-5, rtol=0)
    aa.test_topk_candidates_rule = "detectron2"
    assert infer(aa, (cls, ltrb, ctr)).pred_classes.tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "rule,classes,scores", [("mmdet3", [0], [0.009]), ("detectron2", [1], [0.03])]
)
def test_mmdetection3_ranks_by_the_class_probability(rule, classes, scores):
    """Rule "mmdet3" (``filter_scores_and_topk``) with the threshold on the class probability
    (``score_thresh_on`` "cls"): the ``test_topk_candidates`` best pairs above it by class
    probability (0.9, score 0.009), not by score (0.03: Detectron2's rule)."""
    aa = autoassign(
        threshold_outputs(), score_thresh_on="cls", test_topk_candidates=1,
        test_topk_candidates_rule=rule,
    )  # fmt: skip
    result = infer(aa, threshold_outputs())
    assert result.pred_classes.tolist() == classes
    torch.testing.assert_close(result.scores, torch.tensor(scores), atol=1e-5, rtol=0)


def test_topk_candidates_rule_errors_name_the_key():
    cfg = tiny_pseudo_iou_cfg()
    cfg.MODEL.PSEUDO_IOU.TOPK_CANDIDATES_RULE = "mmdet"
    with pytest.raises(ValueError, match=r"MODEL.PSEUDO_IOU.TOPK_CANDIDATES_RULE \(Python config: "
                       r"model.test_topk_candidates_rule\) must be one of .*'mmdet2'.*got 'mmdet'"):
        build_model(cfg)
    with pytest.raises(ValueError, match=r"MODEL.AUTOASSIGN.TOPK_CANDIDATES_RULE \(Python config"):
        autoassign(blank_outputs(), test_topk_candidates_rule="release")
