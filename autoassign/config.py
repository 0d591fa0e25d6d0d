"""Config keys of AutoAssign (``cfg.MODEL.AUTOASSIGN``) and their validation.

Defaults reproduce the authors' released R-50 1x model (Megvii-BaseDetection/AutoAssign,
auto_assign.res50.fpn.coco.800size.1x/{auto_assign.py,config.py}; docs/design.md); every
paper ablation row is one or two of these keys (``projects/AutoAssign/README.md``).
"""
from detectron2.config import CfgNode as CN

from anchor_free.config import add_anchor_free_config

__all__ = [
    "add_autoassign_config",
    "CENTER_PRIOR_CHOICES",
    "CONFIDENCE_CHOICES",
    "OBJECTNESS_CHOICES",
    "SCORE_THRESH_ON_CHOICES",
]

CENTER_PRIOR_CHOICES = ("none", "fixed", "shared", "per_class")
CONFIDENCE_CHOICES = ("joint", "cls_only", "loc_only", "none")
OBJECTNESS_CHOICES = ("implicit", "none", "explicit")
SCORE_THRESH_ON_CHOICES = ("cls_obj", "cls")


def add_autoassign_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.AUTOASSIGN`` (and the shared anchor-free keys) to ``cfg`` in place."""
    add_anchor_free_config(cfg)
    _C = cfg
    _C.MODEL.AUTOASSIGN = CN()
    # Number of foreground classes K (sigmoid classifier; also the rows of mu/sigma).
    _C.MODEL.AUTOASSIGN.NUM_CLASSES = 80
    # Backbone features the head runs on, finest first (strides 8..128 with the P3-P7 backbone).
    _C.MODEL.AUTOASSIGN.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Conv3x3 (+ norm + ReLU) layers in each of the cls and box towers.
    _C.MODEL.AUTOASSIGN.NUM_CONVS = 4
    # Norm after each tower conv ("GN" as released, "" for none); tower convs keep their bias.
    _C.MODEL.AUTOASSIGN.NORM = "GN"
    # Initial foreground probability of the classifier (release: 0.02, not RetinaNet's 0.01).
    _C.MODEL.AUTOASSIGN.PRIOR_PROB = 0.02
    # Initial bias of the ltrb regressor, in strides (release: 4.0).
    _C.MODEL.AUTOASSIGN.BBOX_BIAS_INIT = 4.0
    # Center weighting G(d): "per_class" (learnable mu, sigma of shape (K, 2), released),
    # "shared" (one learnable (1, 2) pair), "fixed" (frozen at the init), "none" (G = 1).
    _C.MODEL.AUTOASSIGN.CENTER_PRIOR = "per_class"
    # Initial mu of the center prior, both axes, in strides of each location's level.
    _C.MODEL.AUTOASSIGN.MU_INIT = 0.0
    # Initial sigma of the center prior, both axes, in strides; must be > 0.
    _C.MODEL.AUTOASSIGN.SIGMA_INIT = 1.0
    # Keep mu at MU_INIT (paper Table 8 "fix mu").
    _C.MODEL.AUTOASSIGN.FREEZE_MU = False
    # Keep sigma at SIGMA_INIT (paper Table 8 "fix sigma").
    _C.MODEL.AUTOASSIGN.FREEZE_SIGMA = False
    # Confidence in the positive weights exp(P/tau): "joint" P = P(cls) * P(loc) (released),
    # "cls_only", "loc_only" (Table 4), "none" = weights from the center prior only (Table 2).
    _C.MODEL.AUTOASSIGN.CONFIDENCE = "joint"
    # Objectness branch: "implicit" (ImpObj, trained only through cls x obj, released), "none"
    # (no branch), "explicit" (own BCE loss, label 1 inside any box; Table 4 "explicit-obj").
    _C.MODEL.AUTOASSIGN.OBJECTNESS = "implicit"
    # Temperature of the confidence weighting C(P) = exp(P / tau); must be > 0 (Table 9).
    _C.MODEL.AUTOASSIGN.TAU = 1.0 / 3.0
    # lambda in P(loc) = exp(-lambda * GIoU loss) (release REG_WEIGHT 5.0).
    _C.MODEL.AUTOASSIGN.LOC_LAMBDA = 5.0
    # Weight the positive bag by w+ (center x confidence); False: uniform over the in-box set.
    _C.MODEL.AUTOASSIGN.USE_POS_WEIGHTS = True
    # Weight the negative loss by w- = 1 - minmax(1 / (1 - IoU)); False: w- = 1 everywhere.
    _C.MODEL.AUTOASSIGN.USE_NEG_WEIGHTS = True
    # Weight of loss_norm = mean_images(#GT / sum of in-box prior) (release: 1 - alpha = 0.75).
    _C.MODEL.AUTOASSIGN.NORM_LOSS_WEIGHT = 0.75
    # alpha: loss_pos is scaled by alpha and loss_neg by (1 - alpha).
    _C.MODEL.AUTOASSIGN.FOCAL_LOSS_ALPHA = 0.25
    # gamma of the focal modulation of the negative loss.
    _C.MODEL.AUTOASSIGN.FOCAL_LOSS_GAMMA = 2.0
    # Inference: keep (location, class) pairs with score cls x obj above this.
    _C.MODEL.AUTOASSIGN.SCORE_THRESH_TEST = 0.05
    # Inference: at most this many (location, class) candidates per level before NMS.
    _C.MODEL.AUTOASSIGN.TOPK_CANDIDATES_TEST = 1000
    # Inference: IoU threshold of the class-aware NMS (release: 0.6).
    _C.MODEL.AUTOASSIGN.NMS_THRESH_TEST = 0.6
    # Inference: what SCORE_THRESH_TEST thresholds: "cls_obj", the score cls x obj (release,
    # AutoAssign.inference_single_image), or "cls", the class probability alone, the score
    # still being cls x obj (mmdetection, BaseDenseHead._predict_by_feat_single).
    _C.MODEL.AUTOASSIGN.SCORE_THRESH_ON = "cls_obj"
    # Inference: how each level's candidates are chosen with TOPK_CANDIDATES_TEST (K):
    # "cvpods" (release, AutoAssign.inference_single_image: the min(K, H_l x W_l) best
    # (location, class) pairs by score, then the threshold), "mmdet3" (mmdetection 3.x
    # filter_scores_and_topk: the K best pairs above the threshold, ranked by the thresholded
    # value), "detectron2" (FCOS: the K best pairs above the threshold, by score) or "mmdet2"
    # (nms_pre: the K locations of best score if there are more, then the threshold);
    # anchor_free.meta_arch.TOPK_CANDIDATES_RULES.
    _C.MODEL.AUTOASSIGN.TOPK_CANDIDATES_RULE = "cvpods"
    # Inference: clip the boxes to the image and drop those left empty before NMS (mmdetection:
    # distance2bbox with max_shape, _bbox_post_process); False: clipped after NMS (release).
    _C.MODEL.AUTOASSIGN.CLIP_BOXES_BEFORE_NMS = False
