"""
The Pseudo-IoU model (``pseudo_iou.PseudoIoU``) as released by its authors
(SHI-Labs/Pseudo-IoU-for-Anchor-Free-Object-Detection, configs/pseudo-iou/
piou_r50_caffe_fpn_gn-head_1x_coco.py, mmdet 2.11; head and losses: mmdet/models/dense_heads/
piou_head.py, PIOUHead), the Python-config twin of configs/Base-PseudoIoU.yaml.

Starts from Detectron2's ``common/models/fcos.py`` (its R-50 FPN P3-P7, P6 from P5) and changes:
- the ResNet stages come from ``anchor_free.backbone.resnet_stages`` (Detectron2's default stages,
  with the ``deform_on_per_stage`` switch of ``MODEL.RESNETS``); stem and res2 frozen;
- the pixel mean of open-mmlab's caffe-style weights (102.9801, 115.9465, 122.7717), BGR, std 1;
- the head: ``AnchorFreeHead`` (GN towers without conv bias, centerness on the box tower);
- points at cell centres and the Pseudo-IoU assigner (T = 0.4, ">", FCOS scale ranges);
- the released inference: class probability > 0.05, top 1000 per level, NMS 0.5.

Every yacs key of ``MODEL.PSEUDO_IOU`` has its attribute here (docs/configs.md lists them).
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config

from anchor_free.backbone import resnet_stages
from anchor_free.head import AnchorFreeHead
from anchor_free.meta_arch import build_point_generator
from pseudo_iou import PseudoIoU
from pseudo_iou.assignment import PointAssigner, size_ranges_from_sizes

model = get_config("common/models/fcos.py").model
model._target_ = PseudoIoU
del model.test_score_thresh, model.test_nms_thresh  # FCOS's, set below

model.backbone.bottom_up.stages._target_ = resnet_stages
model.backbone.bottom_up.freeze_at = 2  # MODEL.BACKBONE.FREEZE_AT
model.pixel_mean = [102.9801, 115.9465, 122.7717]
model.pixel_std = [1.0, 1.0, 1.0]
model.input_format = "BGR"

model.head = L(AnchorFreeHead)(
    input_shape=[ShapeSpec(channels=256)] * 5,  # one per head_in_features level
    num_classes="${..num_classes}",
    num_convs=4,
    norm="GN",
    conv_bias=False,
    prior_prob=0.01,
    bbox_bias_init=0.0,
    use_quality=True,  # MODEL.PSEUDO_IOU.CENTERNESS
    quality_on_box_tower=True,
)
model.num_classes = 80
model.head_in_features = ["p3", "p4", "p5", "p6", "p7"]
# MODEL.PSEUDO_IOU.POINT_OFFSET: points at (j + 0.5) * s; one stride per head_in_features level.
model.point_generator = L(build_point_generator)(strides=[8, 16, 32, 64, 128], offset=0.5)
model.assigner = L(PointAssigner)(
    assigner="pseudo_iou",
    pseudo_iou_thresh=0.4,
    thresh_inclusive=False,
    centerness_thresh=0.35,
    scaled_box_factor=0.6,
    inside_strict=True,
    # MODEL.PSEUDO_IOU.SIZES_OF_INTEREST; None = MODEL.PSEUDO_IOU.USE_SCALE_RANGES False
    size_ranges=L(size_ranges_from_sizes)(sizes_of_interest=[64, 128, 256, 512]),
    tie_break="min_area",
)
model.focal_loss_alpha = 0.25
model.focal_loss_gamma = 2.0
model.reg_loss_type = "giou"
model.reg_loss_weight = 1.0
model.centerness_weighted_reg_loss = True
model.test_score_thresh = 0.05
model.test_topk_candidates = 1000
model.test_topk_candidates_rule = "mmdet2"  # the release's nms_pre
model.test_nms_thresh = 0.5
model.max_detections_per_image = 100
model.vis_period = 0
