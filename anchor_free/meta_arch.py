"""``AnchorFreeDetector``: what Pseudo-IoU and AutoAssign share on top of Detectron2's
``DenseDetector``: one point per feature-map cell, the :class:`AnchorFreeHead` outputs, and
FCOS-style inference (per level: threshold and top-k candidates by the rule of the source being
reproduced, :data:`TOPK_CANDIDATES_RULES`; decode, optional clip, class-aware NMS, detection
cap). Subclasses implement ``forward_training`` and ``inference_score_terms``; label assignment
never runs at test time.

Mixed precision (``SOLVER.AMP.ENABLED``, i.e. the forward pass under ``torch.autocast``): the
backbone and the head's convs run in float16 / bfloat16; every loss and the post-processing run
in float32 with autocast disabled (:func:`autocast_disabled` on ``forward_training`` and
``forward_inference``, the head outputs cast by :meth:`AnchorFreeDetector.transpose_head_outputs`),
as the releases do: mmdet's ``@force_fp32`` on the heads' ``loss`` and ``get_bboxes`` (the
Pseudo-IoU release, mmdet 2.x ``FCOSHead``; mmdet's AutoAssign port). The AutoAssign release
(cvpods) trains in float32 only.
"""
import functools
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

import torch
from torch import Tensor, nn

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec, batched_nms
from detectron2.modeling.backbone import Backbone, build_backbone
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, ImageList, Instances

from .config import ConfigKey, check_choice

try:  # Detectron2 main
    from detectron2.layers.wrappers import move_device_like

    #: Whether Detectron2 moves images and builds anchors on a device read when the model runs
    #: (``move_device_like``, main), rather than on ``self.device`` recorded as a constant when a
    #: model is traced (v0.6: ``DenseDetector.preprocess_image``, ``Boxes.__init__``).
    DETECTRON2_MOVES_DEVICE_LIKE = True
except ImportError:  # Detectron2 v0.6
    DETECTRON2_MOVES_DEVICE_LIKE = False

    @torch.jit.script_if_tracing
    def move_device_like(src: Tensor, dst: Tensor) -> Tensor:
        """Detectron2 main's ``detectron2.layers.wrappers.move_device_like``: ``src`` on
        ``dst``'s device, read when a traced model runs (scripted inside the trace)."""
        return src.to(dst.device)

__all__ = [
    "DETECTRON2_MOVES_DEVICE_LIKE",
    "PointGenerator",
    "TOPK_CANDIDATES_RULES",
    "AnchorFreeDetector",
    "autocast_disabled",
    "build_point_generator",
    "build_backbone_for_head",
    "check_ground_truth",
]


_Method = TypeVar("_Method", bound=Callable)

#: How each level's (location, class) candidates are chosen at inference
#: (``MODEL.<DETECTOR>.TOPK_CANDIDATES_RULE``, ``model.test_topk_candidates_rule``), with
#: ``K = test_topk_candidates``, "above the threshold" meaning that the pair's thresholded value
#: (:meth:`AnchorFreeDetector.inference_score_terms`) is ``> test_score_thresh``, and ``H x W``
#: the level's number of locations:
#:
#: * "detectron2": the K best pairs above the threshold, by score (Detectron2's
#:   ``DenseDetector._decode_per_level_predictions``, FCOS and RetinaNet).
#: * "cvpods": the ``min(K, H x W)`` best pairs by score, then those above the threshold (the
#:   AutoAssign release, ``auto_assign.res50.fpn.coco.800size.1x/auto_assign.py``
#:   ``AutoAssign.inference_single_image``: at most as many candidates as the level has
#:   locations).
#: * "mmdet2": if ``H x W > K``, the K locations whose best score over the classes is highest
#:   (scores below the threshold included), then every pair of them above the threshold, any
#:   number (mmdetection 2.x ``nms_pre``: the Pseudo-IoU release's ``PIOUHead._get_bboxes``,
#:   mmdetection 2.11 ``FCOSHead._get_bboxes``).
#: * "mmdet3": the K best pairs above the threshold, ranked by the thresholded value (the class
#:   probability when ``score_thresh_on`` is "cls"), not by the score (mmdetection 3.x
#:   ``BaseDenseHead._predict_by_feat_single`` + ``filter_scores_and_topk``).
TOPK_CANDIDATES_RULES = ("detectron2", "cvpods", "mmdet2", "mmdet3")


class PointBoxTransform:
    """
    Detectron2's ``Box2BoxTransformLinear(normalize_by_size=True)`` (FCOS's ltrb distances in
    units of the point's stride-sized square box), the same arithmetic as on Detectron2 main
    (``detectron2/modeling/box_regression.py``), written so that TorchScript compiles it when
    the detector is scripted (the original calls ``torch.stack(..., axis=1)``, which it cannot).
    """

    def __init__(self):
        pass

    def get_deltas(self, src_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """(R, 4) square point boxes and (R, 4) XYXY targets -> (R, 4) ltrb / stride."""
        src_ctr_x = 0.5 * (src_boxes[:, 0] + src_boxes[:, 2])
        src_ctr_y = 0.5 * (src_boxes[:, 1] + src_boxes[:, 3])
        deltas = torch.stack(
            (
                src_ctr_x - target_boxes[:, 0],
                src_ctr_y - target_boxes[:, 1],
                target_boxes[:, 2] - src_ctr_x,
                target_boxes[:, 3] - src_ctr_y,
            ),
            dim=1,
        )
        stride_w = src_boxes[:, 2] - src_boxes[:, 0]
        stride_h = src_boxes[:, 3] - src_boxes[:, 1]
        return deltas / torch.stack([stride_w, stride_h, stride_w, stride_h], dim=1)

    def apply_deltas(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """(R, 4) ltrb / stride (ReLU'd) and (R, 4) point boxes -> (R, 4) XYXY pixels."""
        deltas = torch.relu(deltas)
        boxes = boxes.to(deltas.dtype)
        ctr_x = 0.5 * (boxes[:, 0] + boxes[:, 2])
        ctr_y = 0.5 * (boxes[:, 1] + boxes[:, 3])
        stride_w = boxes[:, 2] - boxes[:, 0]
        stride_h = boxes[:, 3] - boxes[:, 1]
        deltas = deltas * torch.stack([stride_w, stride_h, stride_w, stride_h], dim=1)
        return torch.stack(
            (
                ctr_x - deltas[:, 0],
                ctr_y - deltas[:, 1],
                ctr_x + deltas[:, 2],
                ctr_y + deltas[:, 3],
            ),
            dim=1,
        )


def autocast_disabled(method: _Method) -> _Method:
    """
    Decorator of a detector method that computes losses or post-processes head outputs: runs it
    with autocast disabled on the model's device (``self.device``), so that the float32 tensors
    it receives (or casts to, see :meth:`AnchorFreeDetector.transpose_head_outputs`) stay
    float32 through every op. mmcv's ``force_fp32`` (used on the releases' ``loss`` and
    ``get_bboxes``) does the same with ``autocast(enabled=False)``. A no-op without autocast.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with torch.autocast(device_type=self.device.type, enabled=False):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _grid_offsets(feature: Tensor, stride: int, offset: float) -> Tuple[Tensor, Tensor]:
    """
    Detectron2's ``anchor_generator._create_grid_offsets`` for the (N, C, H, W) ``feature``:
    the (H x W,) x = (j + offset) * stride and y = (i + offset) * stride of its grid, row-major,
    counted on a ``feature.new_ones`` plane, so that the grid is created on the feature's device
    with no device argument (a traced model runs on whatever device it is moved to: v0.6's
    ``arange(..., device=...)`` and main's ``arange`` on the CPU are device constants when
    traced). Values equal to Detectron2's (integers and halves times the stride).
    """
    plane = feature.new_ones((feature.shape[-2], feature.shape[-1]), dtype=torch.float32)
    shift_x = (plane.cumsum(1) - 1.0 + offset) * stride
    shift_y = (plane.cumsum(0) - 1.0 + offset) * stride
    return shift_x.reshape(-1), shift_y.reshape(-1)


class PointGenerator(DefaultAnchorGenerator):
    """
    Detectron2's ``DefaultAnchorGenerator`` (same arguments, buffers and outputs) whose grids
    are created on the features' device also in a traced model (:func:`_grid_offsets`):
    exported models are not bound to the device they were traced on.
    """

    def forward(self, features: List[Tensor]) -> List[Boxes]:
        """``DefaultAnchorGenerator.forward``: per level, Boxes (H x W x A, 4)."""
        anchors: List[Boxes] = []
        # buffers() is not supported by TorchScript; named_buffers() is (as Detectron2).
        buffers: List[Tensor] = [x[1] for x in self.cell_anchors.named_buffers()]
        for feature, stride, base_anchors in zip(features, self.strides, buffers):
            shift_x, shift_y = _grid_offsets(feature, stride, self.offset)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            grid = shifts.view(-1, 1, 4) + base_anchors.view(1, -1, 4)
            anchors.append(Boxes(grid.reshape(-1, 4)))
        return anchors


def build_point_generator(strides: List[int], offset: float) -> PointGenerator:
    """
    Points as stride-sized square "anchors" (Detectron2's FCOS pattern): the centre of the
    anchor at cell (i, j) of level l is ((j + offset) * s_l, (i + offset) * s_l).
    offset 0.5 puts points at cell centres (Pseudo-IoU/mmdet), 0.0 at cell corners (AutoAssign).
    """
    if not 0.0 <= offset < 1.0:
        raise ValueError(
            "MODEL.PSEUDO_IOU.POINT_OFFSET (Python config: model.point_generator.offset) must be "
            f"in [0, 1), got {offset!r}"
        )
    strides = [int(s) for s in strides]  # a plain list also from a Python config's ListConfig
    return PointGenerator(
        sizes=[[s] for s in strides], aspect_ratios=[1.0], strides=strides, offset=offset
    )


def build_backbone_for_head(
    cfg: CfgNode, in_features: List[str], config_key: str
) -> Tuple[Backbone, List[ShapeSpec]]:
    """
    Build ``cfg``'s backbone and check that it produces ``in_features`` (the head's
    ``config_key``, named in errors), from the finest to the coarsest level.

    Returns:
        the backbone and the ShapeSpec of each of ``in_features``.
    """
    backbone = build_backbone(cfg)
    key = ConfigKey(config_key, "model.head_in_features")
    _feature_strides(key, backbone, in_features)
    shapes = backbone.output_shape()
    return backbone, [shapes[f] for f in in_features]


def _feature_strides(key: ConfigKey, backbone: Backbone, in_features: List[str]) -> List[int]:
    """The strides of ``in_features`` (the head's ``key``), which must be backbone outputs from
    the finest to the coarsest level."""
    shapes = backbone.output_shape()
    missing = [f for f in in_features if f not in shapes]
    if missing:
        raise ValueError(
            f"{key}={list(in_features)} names {missing}, which the backbone "
            f"{type(backbone).__name__} does not produce (it has {sorted(shapes)})"
        )
    strides = [shapes[f].stride for f in in_features]
    if strides != sorted(strides):
        raise ValueError(
            f"{key}={list(in_features)} must go from the finest to the coarsest level, "
            f"got strides {strides}"
        )
    return strides


def _check_levels(
    key: ConfigKey,
    backbone: Backbone,
    head: nn.Module,
    head_in_features: List[str],
    point_generator: DefaultAnchorGenerator,
) -> None:
    """
    The head's levels against the backbone, for models built from either config system (a
    Python config names the features, the head's levels and the point strides separately):
    ``head_in_features`` are backbone outputs from the finest to the coarsest, the head has one
    level and the point generator one stride per feature, the backbone's stride.
    """
    strides = _feature_strides(key, backbone, head_in_features)
    num_head_levels = len(getattr(head, "scales", head_in_features))
    if num_head_levels != len(head_in_features):
        raise ValueError(
            f"The head (model.head.input_shape) has {num_head_levels} levels but {key} names "
            f"{len(head_in_features)} features"
        )
    point_strides = [int(s) for s in point_generator.strides]
    if point_strides != strides:
        raise ValueError(
            f"The point generator's strides (model.point_generator.strides) {point_strides} are "
            f"not those of {key}={list(head_in_features)}: {strides}"
        )


def _check_image_ground_truth(
    gt_boxes: Tensor, gt_classes: Tensor, num_classes: int, image_index: int
) -> None:
    """The error of :func:`check_ground_truth` for one image (host reads: runs on failure)."""
    bad = (
        ~torch.isfinite(gt_boxes).all(dim=1)
        | (gt_boxes[:, 2] < gt_boxes[:, 0])
        | (gt_boxes[:, 3] < gt_boxes[:, 1])
    )
    if bool(bad.any()):
        idx = int(bad.nonzero()[0, 0])
        kind = "non-finite" if not torch.isfinite(gt_boxes[idx]).all() else "inverted"
        raise ValueError(
            f"Image {image_index} of the batch has a {kind} gt box #{idx}: "
            f"{gt_boxes[idx].tolist()} (XYXY; needs finite coordinates, x1 >= x0, y1 >= y0)"
        )
    if gt_classes.numel() and (int(gt_classes.min()) < 0 or int(gt_classes.max()) >= num_classes):
        raise ValueError(
            f"Image {image_index} of the batch has gt_classes {gt_classes.unique().tolist()} "
            f"outside [0, {num_classes}) (the config's NUM_CLASSES is {num_classes})"
        )


def check_ground_truth(gt_instances: List[Instances], num_classes: int) -> None:
    """
    Clear errors for ground truth no loss can use, which would otherwise train on as NaN or fail
    with an index error: non-finite or inverted (x1 < x0, y1 < y0) XYXY boxes, classes outside
    [0, num_classes). Empty, zero-size and out-of-image boxes are legal (handled by the losses).

    One test for the whole batch, read on the host once (one synchronisation per iteration on
    CUDA, whatever the number of images and boxes); only when it fails are the images searched
    for the first bad one, named in the error with its box or classes. The training data checks
    (``DATALOADER.CHECK_INPUTS``) find the same problems in the dataset records before training.

    Args:
        gt_instances: per image, ``gt_boxes`` (G_n, 4) XYXY and ``gt_classes`` (G_n,).
        num_classes: K.
    """
    if sum(len(x) for x in gt_instances) == 0:
        return
    boxes = torch.cat([x.gt_boxes.tensor for x in gt_instances])
    classes = torch.cat([x.gt_classes for x in gt_instances])
    bad = (
        ~torch.isfinite(boxes).all(dim=1)
        | (boxes[:, 2] < boxes[:, 0])
        | (boxes[:, 3] < boxes[:, 1])
        | (classes < 0)
        | (classes >= num_classes)
    )
    if bool(bad.any()):
        for index, instances in enumerate(gt_instances):
            _check_image_ground_truth(
                instances.gt_boxes.tensor, instances.gt_classes, num_classes, index
            )


class AnchorFreeDetector(DenseDetector):
    """
    Base of both meta-architectures. Box regression is ltrb distances in units of the level's
    stride, decoded by :class:`PointBoxTransform` (Detectron2's
    ``Box2BoxTransformLinear(normalize_by_size=True)``) around the points (stride-sized anchors),
    so ``box2box_transform.apply_deltas(ltrb, anchors)`` gives pixels.

    Inference attributes, read at every call (set them on a built model to change inference):
    ``test_score_thresh``, ``test_topk_candidates``, ``test_nms_thresh``,
    ``max_detections_per_image`` (the names of Detectron2's ``RetinaNet`` and ``FCOS``) and
    ``clip_boxes_before_nms``, ``test_topk_candidates_rule``. What ``test_score_thresh``
    thresholds is the subclass's choice (:meth:`inference_score_terms`).

    Subclasses set in ``__init__`` (after ``super().__init__``): nothing beyond the arguments;
    ``CONFIG_NODE`` names their yacs node in error messages.
    """

    CONFIG_NODE = "MODEL.<DETECTOR>"

    def __init__(
        self,
        *,
        backbone,
        head,
        head_in_features: List[str],
        point_generator: DefaultAnchorGenerator,
        num_classes: int,
        test_score_thresh: float,
        test_topk_candidates: int,
        test_nms_thresh: float,
        max_detections_per_image: int,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        input_format: str = "BGR",
        vis_period: int = 0,
        clip_boxes_before_nms: bool = False,
        drop_empty_boxes_before_nms: bool = False,
        test_topk_candidates_rule: str = "detectron2",
    ):
        """
        Args:
            backbone, head_in_features, pixel_mean, pixel_std: as Detectron2's ``DenseDetector``.
            head: returns (cls logits, ltrb, quality logits or None), per level (N, C, Hi, Wi).
            point_generator: see :func:`build_point_generator`.
            num_classes: K.
            test_score_thresh: score threshold at inference (see :meth:`inference_scores`).
            test_topk_candidates: (point, class) candidates kept per level before NMS.
            test_nms_thresh: IoU threshold of the class-aware NMS.
            max_detections_per_image: detections kept after NMS.
            input_format, vis_period: as Detectron2's ``RetinaNet``.
            clip_boxes_before_nms: clip the decoded boxes to the input image before NMS (mmdet's
                ``distance2bbox(..., max_shape)``, the Pseudo-IoU release); else boxes are only
                clipped after NMS by Detectron2's ``detector_postprocess`` (Detectron2's
                ``RetinaNet`` and ``FCOS``, the AutoAssign release).
            drop_empty_boxes_before_nms: with ``clip_boxes_before_nms``, drop the boxes that
                clipping leaves empty (boxes of points in the padding) before NMS, as
                mmdetection 3's ``BaseDenseHead._bbox_post_process`` (``min_bbox_size`` 0);
                else ``detector_postprocess`` drops them after NMS and the detection cap.
            test_topk_candidates_rule: how each level's candidates are chosen from the pairs
                above ``test_score_thresh`` and ``test_topk_candidates``, one of
                :data:`TOPK_CANDIDATES_RULES` (checked here, the error naming the yacs key
                ``<CONFIG_NODE>.TOPK_CANDIDATES_RULE``).
        """
        check_choice(
            ConfigKey(
                f"{self.CONFIG_NODE}.TOPK_CANDIDATES_RULE", "model.test_topk_candidates_rule"
            ),
            test_topk_candidates_rule,
            TOPK_CANDIDATES_RULES,
        )
        # Plain lists and floats also from a Python config (instantiate passes ListConfigs), so
        # the model's attributes are the same whichever config built it (and TorchScript types).
        head_in_features = list(head_in_features)
        pixel_mean, pixel_std = [float(v) for v in pixel_mean], [float(v) for v in pixel_std]
        _check_levels(
            ConfigKey(f"{self.CONFIG_NODE}.IN_FEATURES", "model.head_in_features"),
            backbone,
            head,
            head_in_features,
            point_generator,
        )
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        self.point_generator = point_generator
        self.num_classes = num_classes
        self.box2box_transform = PointBoxTransform()
        # The names of Detectron2's RetinaNet / FCOS attributes.
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.input_format = input_format
        self.vis_period = vis_period
        self.clip_boxes_before_nms = clip_boxes_before_nms
        self.drop_empty_boxes_before_nms = drop_empty_boxes_before_nms
        self.test_topk_candidates_rule = test_topk_candidates_rule

    @staticmethod
    def base_kwargs_from_config(cfg: CfgNode, head_cfg: CfgNode) -> Dict:
        """The constructor arguments both detectors read the same way: inference settings from
        their ``MODEL.<ARCH>`` node ``head_cfg``, the rest from Detectron2's keys."""
        return {
            "num_classes": head_cfg.NUM_CLASSES,
            "test_score_thresh": head_cfg.SCORE_THRESH_TEST,
            "test_topk_candidates": head_cfg.TOPK_CANDIDATES_TEST,
            "test_topk_candidates_rule": head_cfg.TOPK_CANDIDATES_RULE,
            "test_nms_thresh": head_cfg.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "vis_period": cfg.VIS_PERIOD,
        }

    @property
    def strides(self) -> List[int]:
        return [int(s) for s in self.point_generator.strides]

    if not DETECTRON2_MOVES_DEVICE_LIKE:

        def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]) -> ImageList:
            """
            Detectron2 v0.6's ``DenseDetector.preprocess_image`` (normalise, pad, batch) with the
            images moved to the model's device by ``move_device_like``, as on Detectron2 main: a
            traced model then moves its input to the device of its ``pixel_mean`` buffer as it
            runs, not to the device it was traced on (v0.6's ``x.to(self.device)``).
            """
            images = [move_device_like(x["image"], self.pixel_mean) for x in batched_inputs]
            images = [(x - self.pixel_mean) / self.pixel_std for x in images]
            return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def transpose_head_outputs(
        self, predictions: Tuple[List[Tensor], List[Tensor], Optional[List[Tensor]]]
    ) -> Tuple[List[Tensor], List[Tensor], Optional[List[Tensor]]]:
        """
        (N, C, Hi, Wi) per level -> (N, Hi*Wi, C) per level, for (cls, ltrb, quality), in
        float32: head outputs computed under autocast (float16 / bfloat16) are cast here, so the
        losses and the post-processing never see them in low precision (no copy for float32).
        """
        cls_logits, box_ltrb, quality_logits = predictions
        cls_logits = [x.float() for x in cls_logits]
        box_ltrb = [x.float() for x in box_ltrb]
        if quality_logits is not None:
            quality_logits = [x.float() for x in quality_logits]
        if quality_logits is None:
            cls_logits, box_ltrb = self._transpose_dense_predictions(
                [cls_logits, box_ltrb], [self.num_classes, 4]
            )
        else:
            cls_logits, box_ltrb, quality_logits = self._transpose_dense_predictions(
                [cls_logits, box_ltrb, quality_logits], [self.num_classes, 4, 1]
            )
        return cls_logits, box_ltrb, quality_logits

    def inference_score_terms(
        self, cls_logits: Tensor, quality_logits: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor]:
        """
        Args:
            cls_logits: (R, K) of one level and image; quality_logits: (R, 1) or None.
        Returns:
            scores: (R, K) float32, the detection score of each (location, class) pair;
            thresholded: (R, K), the value compared with ``test_score_thresh`` (pairs at or
            below it are dropped): ``scores`` itself or the class probability.
        """
        raise NotImplementedError

    def inference_scores(self, cls_logits: Tensor, quality_logits: Optional[Tensor]) -> Tensor:
        """
        (R, K) the score of each pair above the threshold (at least float32's smallest normal
        number, so > 0), 0 for the others: :meth:`inference_score_terms` in one tensor.
        """
        scores, thresholded = self.inference_score_terms(cls_logits, quality_logits)
        # torch.finfo(torch.float32).tiny as a literal: TorchScript compiles neither
        # torch.finfo nor a global float.
        kept = scores.clamp(min=1.1754943508222875e-38)
        return torch.where(thresholded > self.test_score_thresh, kept, torch.zeros_like(scores))

    @autocast_disabled
    def forward_inference(
        self,
        images: ImageList,
        features: List[Tensor],
        predictions: Tuple[List[Tensor], List[Tensor], Optional[List[Tensor]]],
    ) -> List[Instances]:
        """
        Args:
            images: the batch (its ``image_sizes`` bound the clipping); features: per level
                (N, C, Hi, Wi), for the point grids; predictions: the head outputs.
        Returns:
            per image, Instances in input-image pixels (see :meth:`inference_single_image`),
            computed in float32 also under autocast.
        """
        cls_logits, box_ltrb, quality_logits = self.transpose_head_outputs(predictions)
        points = self.point_generator(features)
        results: List[Instances] = []
        for img_idx, image_size in enumerate(images.image_sizes):
            terms = [
                self.inference_score_terms(
                    cls_l[img_idx], None if quality_logits is None else quality_logits[l][img_idx]
                )
                for l, cls_l in enumerate(cls_logits)
            ]
            ltrb = [x[img_idx] for x in box_ltrb]
            results.append(self.inference_single_image(points, terms, ltrb, image_size))
        return results

    def inference_single_image(
        self,
        points: List[Boxes],
        score_terms: List[Tuple[Tensor, Tensor]],
        box_ltrb: List[Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        """
        Args:
            points: per level, Boxes (Ri, 4) of stride-sized squares around the points.
            score_terms: per level, (scores, thresholded) (Ri, K) each
                (:meth:`inference_score_terms`); box_ltrb: per level (Ri, 4) in stride units.
        Returns:
            Instances with pred_boxes, scores, pred_classes; at most
            ``max_detections_per_image``, sorted by decreasing score.

        Per level: the candidates of :meth:`select_candidates`, decoded (as Detectron2's
        ``DenseDetector._decode_per_level_predictions``); then, over the levels, clipping to
        ``image_size`` if ``clip_boxes_before_nms``, class-aware NMS at ``test_nms_thresh`` and
        the ``max_detections_per_image`` best.
        """
        per_level: List[Instances] = []
        for points_l, (scores_l, thresholded_l), ltrb_l in zip(points, score_terms, box_ltrb):
            scores_l, locations, classes = self.select_candidates(scores_l, thresholded_l)
            boxes = self.box2box_transform.apply_deltas(
                ltrb_l[locations], points_l.tensor[locations]
            )
            per_level.append(
                Instances(
                    image_size, pred_boxes=Boxes(boxes), scores=scores_l, pred_classes=classes
                )
            )
        # per_level[0].cat, not Instances.cat: TorchScript compiles the former (Detectron2's
        # DenseDetector._decode_multi_level_predictions does the same).
        pred = per_level[0].cat(per_level)
        if self.clip_boxes_before_nms:
            pred.pred_boxes.clip(image_size)
            if self.drop_empty_boxes_before_nms:
                pred = pred[pred.pred_boxes.nonempty()]
        keep = batched_nms(
            pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh
        )
        return pred[keep[: self.max_detections_per_image]]

    def select_candidates(
        self, scores: Tensor, thresholded: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """
        One level's candidates by ``test_topk_candidates_rule`` (:data:`TOPK_CANDIDATES_RULES`).

        Args:
            scores, thresholded: (R, K) of one level and image (:meth:`inference_score_terms`).
        Returns:
            the C candidates' scores (C,), location indices (C,) in [0, R) and class indices
            (C,) in [0, K).
        """
        rule = self.test_topk_candidates_rule
        topk = self.test_topk_candidates
        if rule == "cvpods":
            num_classes = scores.shape[1]
            top, flat = scores.flatten().topk(_num_topk(scores.shape[0], topk))
            keep = thresholded.flatten()[flat] > self.test_score_thresh
            flat = flat[keep]
            locations = torch.div(flat, num_classes, rounding_mode="floor")
            return top[keep], locations, flat % num_classes
        if rule == "mmdet2":
            locations = scores.max(dim=1)[0].topk(_num_topk(scores.shape[0], topk))[1]
            pairs = (thresholded[locations] > self.test_score_thresh).nonzero()
            locations, classes = locations[pairs[:, 0]], pairs[:, 1]
            return scores[locations, classes], locations, classes
        keep = thresholded > self.test_score_thresh
        rank = thresholded[keep] if rule == "mmdet3" else scores[keep]
        pairs = keep.nonzero()[rank.topk(_num_topk(rank.shape[0], topk))[1]]
        locations, classes = pairs[:, 0], pairs[:, 1]
        return scores[locations, classes], locations, classes


def _num_topk(size: int, k: int) -> int:
    """``min(size, k)``, where ``size`` is a tensor's ``shape[i]``: when tracing, that is a
    tensor, and ``torch.clamp`` keeps it in the graph (Detectron2 main's
    ``DenseDetector._decode_per_level_predictions``), so that an exported model takes the
    minimum at the size it is run at, not at the size it was traced at."""
    if isinstance(size, Tensor):
        return torch.clamp(size, max=k)
    return min(size, k)
