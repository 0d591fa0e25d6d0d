"""Config keys of the Pseudo-IoU detector (``cfg.MODEL.PSEUDO_IOU``).

Defaults are the authors' released model (SHI-Labs/Pseudo-IoU-for-Anchor-Free-Object-Detection,
mmdet/models/dense_heads/piou_head.py ``PIOUHead.loss`` and
configs/pseudo-iou/piou_r50_caffe_fpn_gn-head_1x_coco.py: GIoU + centerness, centerness-weighted
box loss, ``>`` threshold, FCOS scale ranges; docs/design.md lists where the paper differs); the
paper's ablations are reached by overrides listed in
``projects/PseudoIoU/README.md``.
"""
from detectron2.config import CfgNode as CN

from anchor_free.config import add_anchor_free_config

__all__ = ["add_pseudo_iou_config"]


def add_pseudo_iou_config(cfg: CN) -> None:
    """Add the ``MODEL.PSEUDO_IOU`` keys (and the shared anchor-free keys) to ``cfg`` in place."""
    add_anchor_free_config(cfg)
    _C = cfg
    _C.MODEL.PSEUDO_IOU = CN()
    # Number of foreground classes K (sigmoid classifier, no background logit; COCO 80, VOC 20).
    _C.MODEL.PSEUDO_IOU.NUM_CLASSES = 80
    # Backbone outputs the head runs on, from the finest to the coarsest level.
    _C.MODEL.PSEUDO_IOU.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Number of conv3x3 layers in each of the cls and box towers.
    _C.MODEL.PSEUDO_IOU.NUM_CONVS = 4
    # Norm after each tower conv ("GN" = GroupNorm(32) as released, "" for none).
    _C.MODEL.PSEUDO_IOU.NORM = "GN"
    # Initial foreground probability of the classifier (sets the classifier bias).
    _C.MODEL.PSEUDO_IOU.PRIOR_PROB = 0.01
    # Sigmoid focal loss alpha and gamma.
    _C.MODEL.PSEUDO_IOU.FOCAL_LOSS_ALPHA = 0.25
    _C.MODEL.PSEUDO_IOU.FOCAL_LOSS_GAMMA = 2.0
    # Centre of the point of each feature-map cell, in cells: 0.5 = cell centre ((j + 0.5) * s).
    _C.MODEL.PSEUDO_IOU.POINT_OFFSET = 0.5

    # --- Assignment: FCOS rules (in box, scale range, min-area tie-break), then ASSIGNER's filter.
    # A point is inside a box if all of l, t, r, b are > 0 (True, FCOS/release) or >= 0 (False).
    _C.MODEL.PSEUDO_IOU.INSIDE_STRICT = True
    # Restrict each level to objects whose max(l, t, r, b) (pixels) is in its size range.
    _C.MODEL.PSEUDO_IOU.USE_SCALE_RANGES = True
    # Level boundaries of the size ranges: (-1, 64], [64, 128], ..., [512, inf) with both ends
    # inclusive as in mmdet's FCOS (one value fewer than IN_FEATURES).
    _C.MODEL.PSEUDO_IOU.SIZES_OF_INTEREST = [64, 128, 256, 512]
    # Box a point inside several candidate boxes is matched to: "min_area" (FCOS/release) or
    # "max_pseudo_iou" (the candidate with the highest Pseudo-IoU).
    _C.MODEL.PSEUDO_IOU.TIE_BREAK = "min_area"
    # Filter applied to the FCOS positives against their matched box; failing points become
    # background: "all_in_box" (AF-baseline), "pseudo_iou", "centerness", "scaled_box".
    _C.MODEL.PSEUDO_IOU.ASSIGNER = "pseudo_iou"
    # Pseudo-IoU threshold T of the "pseudo_iou" assigner (0.4 = paper's best and release).
    _C.MODEL.PSEUDO_IOU.PSEUDO_IOU_THRESH = 0.4
    # Threshold comparison of the "pseudo_iou" and "centerness" assigners: False = value > thr
    # (released code), True = value >= thr (paper).
    _C.MODEL.PSEUDO_IOU.THRESH_INCLUSIVE = False
    # Centerness threshold of the "centerness" assigner (paper Table 2 best: 0.35).
    _C.MODEL.PSEUDO_IOU.CENTERNESS_THRESH = 0.35
    # Scale s of the "scaled_box" assigner: positive if |x-xc| < s*w/2 and |y-yc| < s*h/2
    # (paper Table 2 best: 0.6).
    _C.MODEL.PSEUDO_IOU.SCALED_BOX_FACTOR = 0.6

    # --- Losses.
    # Box regression loss on the positives: "giou" (release) or "iou" (-log IoU, UnitBox; paper).
    _C.MODEL.PSEUDO_IOU.REG_LOSS = "giou"
    # Weight of the box regression loss (paper lambda).
    _C.MODEL.PSEUDO_IOU.REG_LOSS_WEIGHT = 1.0
    # Build the centerness branch (on the box tower) and train it with BCE / num_pos.
    _C.MODEL.PSEUDO_IOU.CENTERNESS = True
    # Weight the box loss of each positive by its centerness target and normalise by the
    # all-reduced sum of targets (release); False: plain sum / num_pos (paper).
    _C.MODEL.PSEUDO_IOU.CENTERNESS_WEIGHTED_REG_LOSS = True

    # --- Inference (release: PIOUHead._get_bboxes + mmdet multiclass_nms, test_cfg of the
    # release config). Detections per image: TEST.DETECTIONS_PER_IMAGE.
    # Keep (point, class) pairs whose class probability (before the centerness product) is > this.
    _C.MODEL.PSEUDO_IOU.SCORE_THRESH_TEST = 0.05
    # Candidates kept per level before NMS (see TOPK_CANDIDATES_RULE).
    _C.MODEL.PSEUDO_IOU.TOPK_CANDIDATES_TEST = 1000
    # How each level's candidates are chosen with TOPK_CANDIDATES_TEST (K): "mmdet2" (release,
    # mmdetection 2.11 nms_pre: if the level has more than K locations, the K whose best
    # cls x centerness is highest, then every pair of them above the threshold), "detectron2"
    # (the K best (point, class) pairs above the threshold, by score), "mmdet3" (ranked by the
    # class probability) or "cvpods"; anchor_free.meta_arch.TOPK_CANDIDATES_RULES.
    _C.MODEL.PSEUDO_IOU.TOPK_CANDIDATES_RULE = "mmdet2"
    # IoU threshold of the class-aware NMS.
    _C.MODEL.PSEUDO_IOU.NMS_THRESH_TEST = 0.5
