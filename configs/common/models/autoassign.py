"""
The AutoAssign model (``autoassign.AutoAssign``) as released by its authors
(Megvii-BaseDetection/AutoAssign, auto_assign.res50.fpn.coco.800size.1x: auto_assign.py and
net.py, cvpods), the Python-config twin of configs/Base-AutoAssign.yaml.

Starts from Detectron2's ``common/models/retinanet.py`` (its R-50 FPN P3-P7 with P6 from C5, as
the release's ``build_retinanet_resnet_fpn_backbone``) and changes:
- the ResNet stages come from ``anchor_free.backbone.resnet_stages`` (Detectron2's default stages,
  with the ``deform_on_per_stage`` switch of ``MODEL.RESNETS``); stem and res2 frozen;
- MSRA caffe weights' pixel mean (103.530, 116.280, 123.675), BGR, std 1;
- no anchors: points at (j * s, i * s) and the learnable category-wise center prior;
- the head: ``AnchorFreeHead`` (GN towers with conv bias, prior 0.02, box bias 4.0, implicit
  objectness on the box tower);
- the released losses and inference (score cls x obj > 0.05, top 1000 per level, NMS 0.6).

Every yacs key of ``MODEL.AUTOASSIGN`` has its attribute here (docs/configs.md lists them).
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config

from anchor_free.backbone import resnet_stages
from anchor_free.head import AnchorFreeHead
from anchor_free.meta_arch import build_point_generator
from autoassign import AutoAssign, CenterPrior

model = get_config("common/models/retinanet.py").model
model._target_ = AutoAssign
del model.anchor_generator, model.box2box_transform, model.anchor_matcher

model.backbone.bottom_up.stages._target_ = resnet_stages
model.backbone.bottom_up.freeze_at = 2  # MODEL.BACKBONE.FREEZE_AT
model.backbone.top_block.in_feature = "res5"  # MODEL.FPN.TOP_BLOCK_IN_FEATURE
model.pixel_mean = [103.530, 116.280, 123.675]
model.pixel_std = [1.0, 1.0, 1.0]
model.input_format = "BGR"

model.head = L(AnchorFreeHead)(
    input_shape=[ShapeSpec(channels=256)] * 5,  # one per head_in_features level
    num_classes="${..num_classes}",
    num_convs=4,
    norm="GN",
    conv_bias=True,
    prior_prob=0.02,
    bbox_bias_init=4.0,
    use_quality=True,  # False exactly when model.objectness is "none"
    quality_on_box_tower=True,
)
model.num_classes = 80
model.head_in_features = ["p3", "p4", "p5", "p6", "p7"]
# Points at (j * s, i * s): the release's ShiftGenerator OFFSET = 0.0.
model.point_generator = L(build_point_generator)(strides=[8, 16, 32, 64, 128], offset=0.0)
model.center_prior = L(CenterPrior)(
    num_classes="${..num_classes}",
    mode="per_class",
    mu_init=0.0,
    sigma_init=1.0,
    freeze_mu=False,
    freeze_sigma=False,
)
model.confidence = "joint"
model.objectness = "implicit"
model.tau = 1.0 / 3.0
model.loc_lambda = 5.0
model.use_pos_weights = True
model.use_neg_weights = True
model.norm_loss_weight = 0.75
model.focal_loss_alpha = 0.25
model.focal_loss_gamma = 2.0
model.test_score_thresh = 0.05
model.test_topk_candidates = 1000
model.test_topk_candidates_rule = "cvpods"  # the release's top-k, then threshold
model.test_nms_thresh = 0.6
model.score_thresh_on = "cls_obj"
model.clip_boxes_before_nms = False
model.max_detections_per_image = 100
model.vis_period = 0
