"""The Pseudo-IoU detector (Li et al., CVPRW 2021) as a Detectron2 meta-architecture.

FCOS-style anchor-free detector whose positives are the FCOS positives (in box, level size range,
min-area box) whose Pseudo-IoU with their box passes a threshold (paper Sec. 3.1-3.2). Defaults are
the authors' released model (``SHI-Labs/Pseudo-IoU-for-Anchor-Free-Object-Detection``,
``mmdet/models/dense_heads/piou_head.py``, ``PIOUHead``: a copy of mmdet 2.11's ``FCOSHead``);
every row of the paper's tables is a config switch (``projects/PseudoIoU/README.md``).
"""
import logging
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss_jit
from torch import Tensor, nn

from anchor_free.config import ConfigKey, check_choice, check_interval, check_min
from anchor_free.distributed import reduce_mean
from anchor_free.head import AnchorFreeHead
from anchor_free.losses import giou_loss
from anchor_free.inbox import device_vector
from anchor_free.meta_arch import (
    AnchorFreeDetector,
    autocast_disabled,
    build_backbone_for_head,
    build_point_generator,
    check_ground_truth,
)
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils.events import get_event_storage

from .assignment import (
    SIZES_OF_INTEREST_KEY,
    PointAssigner,
    centerness,
    size_ranges_from_sizes,
)

__all__ = ["PseudoIoU", "PointTargets", "REG_LOSSES", "build_assigner"]

logger = logging.getLogger(__name__)

REG_LOSSES = ("giou", "iou")


class PointTargets(NamedTuple):
    """Training targets of a batch (N images, R points of all levels concatenated)."""

    gt_labels: Tensor  # (N, R) int64 in {0, ..., K-1}, or K = background
    gt_boxes: Tensor  # (N, R, 4) XYXY pixels of the matched box; 0 for background
    matched_idxs: Tensor  # (N, R) index into the image's gt boxes, -1 for background
    candidate_idxs: Tensor  # (N, R) box chosen by the FCOS rules before the rule filter, or -1


def _ltrb_to_boxes(ltrb: Tensor) -> Tensor:
    """(P, 4) distances -> (P, 4) XYXY boxes around the origin (IoU/GIoU are translation
    and scale invariant, so this equals decoding around the point in any unit)."""
    left, top, right, bottom = ltrb.unbind(dim=-1)
    return torch.stack([-left, -top, right, bottom], dim=-1)


@META_ARCH_REGISTRY.register()
class PseudoIoU(AnchorFreeDetector):
    """
    Implement the Pseudo-IoU detector: :class:`AnchorFreeHead` (cls/box towers, Scale+ReLU ltrb
    in stride units, optional centerness on the box tower), points at cell centres,
    :class:`PointAssigner` labels, focal + (G)IoU + centerness losses with cross-worker
    normalisers, and FCOS-cost inference (no assignment at test time).

    Inference as released (``PIOUHead._get_bboxes`` and mmdet's ``multiclass_nms``): the class
    probability is thresholded at ``test_score_thresh``, the score is cls x centerness (no
    square root), each level keeps its ``test_topk_candidates`` locations of best score when it
    has more (mmdetection 2's ``nms_pre``, ``test_topk_candidates_rule`` "mmdet2"), the boxes are
    clipped to the image before NMS. Set ``model.test_score_thresh``
    on a built model to change the class-probability threshold, as on Detectron2's RetinaNet.

    Mixed precision: the losses (``forward_training``) and the post-processing run in float32
    with autocast disabled (``PIOUHead.loss`` / ``get_bboxes`` are ``@force_fp32``).
    """

    CONFIG_NODE = "MODEL.PSEUDO_IOU"

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        head_in_features: List[str],
        point_generator: DefaultAnchorGenerator,
        assigner: PointAssigner,
        num_classes: int,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        reg_loss_type: str = "giou",
        reg_loss_weight: float = 1.0,
        centerness_weighted_reg_loss: bool = True,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        input_format: str = "BGR",
        vis_period: int = 0,
        test_topk_candidates_rule: str = "mmdet2",
    ):
        """
        Args:
            backbone, head, head_in_features, point_generator: see :class:`AnchorFreeDetector`.
                ``head(features)`` returns (cls, ltrb, centerness-or-None) per level; without the
                centerness output there is no centerness loss and scores are the class scores.
            assigner: the label assignment rule.
            num_classes: K.
            focal_loss_alpha, focal_loss_gamma: sigmoid focal loss parameters.
            reg_loss_type: "giou" (release) or "iou" (-log IoU, the paper).
            reg_loss_weight: weight of the box loss.
            centerness_weighted_reg_loss: weight each positive's box loss by its centerness target
                and divide by their all-reduced sum (release); else divide the sum by num_pos.
            test_score_thresh: threshold on the *class* probability (mmdet's ``score_thr``):
                (point, class) pairs whose class probability is <= it are dropped, whatever
                their centerness; the others keep the score cls x centerness, however small.
            test_topk_candidates: candidates kept per level before NMS, as
                ``test_topk_candidates_rule`` says (``TOPK_CANDIDATES_RULE``): "mmdet2" (release:
                ``nms_pre`` = 1000 points by their best score, then the threshold), or
                "detectron2" / "mmdet3" / "cvpods" (pairs; see
                ``anchor_free.meta_arch.TOPK_CANDIDATES_RULES``).
            test_nms_thresh, max_detections_per_image: class-aware NMS IoU, detections kept.
            pixel_mean, pixel_std, input_format, vis_period: as Detectron2's RetinaNet.
        """
        _check_settings(
            num_classes=num_classes,
            focal_loss_alpha=focal_loss_alpha,
            focal_loss_gamma=focal_loss_gamma,
            reg_loss_type=reg_loss_type,
            reg_loss_weight=reg_loss_weight,
            test_score_thresh=test_score_thresh,
            test_topk_candidates=test_topk_candidates,
            test_nms_thresh=test_nms_thresh,
        )
        super().__init__(
            backbone=backbone,
            head=head,
            head_in_features=head_in_features,
            point_generator=point_generator,
            num_classes=num_classes,
            test_score_thresh=test_score_thresh,
            test_topk_candidates=test_topk_candidates,
            test_nms_thresh=test_nms_thresh,
            max_detections_per_image=max_detections_per_image,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            input_format=input_format,
            vis_period=vis_period,
            # The release decodes with distance2bbox(..., max_shape=img_shape): clipped boxes.
            clip_boxes_before_nms=True,
            test_topk_candidates_rule=test_topk_candidates_rule,
        )
        if assigner.size_ranges is not None and len(assigner.size_ranges) != len(head_in_features):
            sizes = ", ".join(f"{high:g}" for _, high in assigner.size_ranges[:-1])
            raise ValueError(
                f"{SIZES_OF_INTEREST_KEY} = [{sizes}] needs one value fewer than "
                f"{_key('IN_FEATURES', 'head_in_features')} = {list(head_in_features)} (or set "
                "MODEL.PSEUDO_IOU.USE_SCALE_RANGES False / model.assigner.size_ranges=None)"
            )
        self.assigner = assigner
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.reg_loss_type = reg_loss_type
        self.reg_loss_weight = reg_loss_weight
        self.centerness_weighted_reg_loss = centerness_weighted_reg_loss

    @classmethod
    def from_config(cls, cfg) -> Dict:
        pcfg = cfg.MODEL.PSEUDO_IOU
        assigner = build_assigner(cfg)
        backbone, feature_shapes = build_backbone_for_head(
            cfg, pcfg.IN_FEATURES, "MODEL.PSEUDO_IOU.IN_FEATURES"
        )
        strides = [s.stride for s in feature_shapes]
        head = AnchorFreeHead(
            input_shape=feature_shapes,
            num_classes=pcfg.NUM_CLASSES,
            num_convs=pcfg.NUM_CONVS,
            norm=pcfg.NORM,
            conv_bias=False,
            prior_prob=pcfg.PRIOR_PROB,
            bbox_bias_init=0.0,
            use_quality=pcfg.CENTERNESS,
            quality_on_box_tower=True,
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": list(pcfg.IN_FEATURES),
            "point_generator": build_point_generator(strides, pcfg.POINT_OFFSET),
            "assigner": assigner,
            "focal_loss_alpha": pcfg.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": pcfg.FOCAL_LOSS_GAMMA,
            "reg_loss_type": pcfg.REG_LOSS,
            "reg_loss_weight": pcfg.REG_LOSS_WEIGHT,
            "centerness_weighted_reg_loss": pcfg.CENTERNESS_WEIGHTED_REG_LOSS,
            **cls.base_kwargs_from_config(cfg, pcfg),
        }

    # ------------------------------------------------------------------------------- training
    @autocast_disabled
    def forward_training(
        self,
        images: ImageList,
        features: List[Tensor],
        predictions: Tuple[List[Tensor], List[Tensor], Optional[List[Tensor]]],
        gt_instances: List[Instances],
    ) -> Dict[str, Tensor]:
        cls_logits, box_ltrb, ctr_logits = self.transpose_head_outputs(predictions)
        points = self.point_generator(features)
        grid_sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        targets = self.label_points(points, gt_instances, grid_sizes)
        self._log_assignment(targets, [len(p) for p in points], gt_instances)
        return self.losses(points, cls_logits, box_ltrb, ctr_logits, targets)

    @torch.no_grad()
    def label_points(
        self,
        points: List[Boxes],
        gt_instances: List[Instances],
        grid_sizes: List[Tuple[int, int]],
    ) -> PointTargets:
        """
        Label the points of the batch with :meth:`PointAssigner.assign_grid` (one call for all
        images, on the in-box pairs only) after one batched check of the ground truth.

        Args:
            points: per level, Boxes (R_l, 4): stride-sized squares centred on the points, from
                ``self.point_generator`` on feature maps of ``grid_sizes`` (R_l = H_l W_l); the
                assignment measures distances from their centres.
            gt_instances: per image, with ``gt_boxes`` (input pixels) and ``gt_classes``.
            grid_sizes: per level (H_l, W_l) of the feature maps.
        Returns:
            PointTargets for the batch (points of all levels concatenated).
        """
        num_points_per_level = [len(p) for p in points]
        expected = [h * w for h, w in grid_sizes]
        if num_points_per_level != expected:
            raise ValueError(
                f"label_points: {num_points_per_level} points per level do not match the "
                f"feature grids {list(grid_sizes)} (H x W = {expected}); pass the points of "
                "self.point_generator on those feature maps"
            )
        check_ground_truth(gt_instances, self.num_classes)
        centers = Boxes.cat(points).get_centers()  # (R, 2)
        num_images, num_points = len(gt_instances), centers.shape[0]
        matched, candidates = self.assigner.assign_grid(
            centers,
            grid_sizes,
            self.strides,
            self.point_generator.offset,
            [x.gt_boxes for x in gt_instances],
        )  # (N, R) each
        counts = [len(x) for x in gt_instances]
        if sum(counts) == 0:
            labels = torch.full_like(matched, self.num_classes)
            boxes = centers.new_zeros((num_images, num_points, 4))
            return PointTargets(labels, boxes, matched, candidates)
        all_boxes = torch.cat([x.gt_boxes.tensor for x in gt_instances])  # (G, 4), G over batch
        all_classes = torch.cat([x.gt_classes for x in gt_instances])  # (G,)
        starts = [sum(counts[:n]) for n in range(num_images)]
        is_pos = matched >= 0
        # Index into the batch's boxes (clamped: an image without boxes has no positives).
        first_box = device_vector(starts, torch.long, matched.device)  # (N,)
        batch_idxs = matched.clamp(min=0) + first_box[:, None]
        batch_idxs = batch_idxs.clamp(max=sum(counts) - 1)
        labels = torch.where(
            is_pos, all_classes[batch_idxs], torch.full_like(matched, self.num_classes)
        )
        boxes = all_boxes[batch_idxs] * is_pos[..., None].to(all_boxes.dtype)
        return PointTargets(labels, boxes, matched, candidates)

    def losses(
        self,
        points: List[Boxes],
        cls_logits: List[Tensor],
        box_ltrb: List[Tensor],
        ctr_logits: Optional[List[Tensor]],
        targets: PointTargets,
    ) -> Dict[str, Tensor]:
        """
        The release's ``PIOUHead.loss`` (focal / num_pos, centerness-weighted GIoU / sum of the
        centerness targets, centerness BCE / num_pos; the paper's loss, Sec. 3.2, is
        ``REG_LOSS "iou"`` without centerness). Float32 inputs (see ``transpose_head_outputs``).

        Args: points per level (R_l boxes); cls_logits (N, R_l, K), box_ltrb (N, R_l, 4)
        stride units, ctr_logits (N, R_l, 1) or None, per level; targets for the batch.

        Returns:
            {"loss_cls", "loss_box_reg"} and "loss_centerness" with the centerness branch.
        """
        cls_logits_all = torch.cat(cls_logits, dim=1)  # (N, R, K)
        box_ltrb_all = torch.cat(box_ltrb, dim=1)  # (N, R, 4)
        pos_mask = targets.gt_labels != self.num_classes  # (N, R); no ignored points
        num_pos_local = pos_mask.sum()
        num_pos = reduce_mean(num_pos_local.to(torch.float32)).clamp(min=1.0)

        # One-hot without the background column (F.one_hot(labels, K + 1)[..., :-1], whose
        # range check reads the labels' min and max on the host on the CPU).
        classes = torch.arange(self.num_classes, device=targets.gt_labels.device)
        gt_onehot = targets.gt_labels[..., None] == classes  # (N, R, K) bool
        loss_cls = (
            sigmoid_focal_loss_jit(
                cls_logits_all,
                gt_onehot.to(cls_logits_all.dtype),
                alpha=self.focal_loss_alpha,
                gamma=self.focal_loss_gamma,
                reduction="sum",
            )
            / num_pos
        )

        # The positives, by their index in the flattened (N * R) points: one synchronisation
        # (their number); long-index gathers below do not synchronise, where boolean masks
        # would, once per gather and once more in its backward.
        num_images, num_points = pos_mask.shape
        pos_idx = pos_mask.reshape(-1).nonzero()[:, 0]  # (P,), row-major as pos_mask's order
        has_pos = pos_idx.shape[0] > 0
        # Regression targets in stride units: Box2BoxTransformLinear(normalize_by_size=True)
        # on stride-sized point boxes gives (l, t, r, b) / stride (the release's norm_on_bbox).
        anchors = Boxes.cat(points).tensor[pos_idx % num_points]  # (P, 4)
        target_ltrb = self.box2box_transform.get_deltas(
            anchors, targets.gt_boxes.reshape(-1, 4)[pos_idx]
        )
        pred_ltrb = box_ltrb_all.reshape(-1, 4)[pos_idx]  # (P, 4)
        ctr_targets = centerness(target_ltrb)  # (P,)

        if has_pos:
            # Non-finite predictions (a diverged training) give a NaN loss, which Detectron2's
            # trainer reports (SimpleTrainer: "Loss became infinite or NaN"); checking here
            # would cost a synchronisation per iteration.
            if self.reg_loss_type == "giou":
                reg = giou_loss(_ltrb_to_boxes(pred_ltrb), _ltrb_to_boxes(target_ltrb), eps=1e-6)
            else:  # UnitBox -log IoU, IoU clamped at 1e-6 as mmdet's IoULoss
                iou = matched_pairwise_iou(
                    Boxes(_ltrb_to_boxes(pred_ltrb)), Boxes(_ltrb_to_boxes(target_ltrb))
                )
                reg = -iou.clamp(min=1e-6).log()
        else:  # finite zero that keeps every regression parameter in the graph
            reg = box_ltrb_all.sum()[None] * 0
        if self.centerness_weighted_reg_loss:
            # All-reduced on every worker, with or without local positives (a collective).
            ctr_sum = reduce_mean(ctr_targets.sum()).clamp(min=1e-6)
            loss_box_reg = (reg * ctr_targets).sum() / ctr_sum if has_pos else reg.sum()
        else:
            loss_box_reg = reg.sum() / num_pos
        losses = {"loss_cls": loss_cls, "loss_box_reg": self.reg_loss_weight * loss_box_reg}

        if ctr_logits is not None:
            ctr_logits_all = torch.cat(ctr_logits, dim=1)[..., 0]  # (N, R)
            if has_pos:
                loss_ctr = (
                    F.binary_cross_entropy_with_logits(
                        ctr_logits_all.reshape(-1)[pos_idx], ctr_targets, reduction="sum"
                    )
                    / num_pos
                )
            else:
                loss_ctr = ctr_logits_all.sum() * 0
            losses["loss_centerness"] = loss_ctr
        return losses

    def _log_assignment(
        self, targets: PointTargets, num_points_per_level: List[int], gt_instances: List[Instances]
    ) -> None:
        """Positives per image / level / object, objects left without any positive, and FCOS
        positives before the rule filter, to Detectron2's EventStorage: computed on the
        device and fetched in one transfer (one synchronisation per iteration)."""
        storage = get_event_storage()
        num_images = len(gt_instances)
        counts = [len(x) for x in gt_instances]
        num_gt = sum(counts)
        pos_mask = targets.matched_idxs >= 0  # (N, R)
        stats = [pos_mask.sum(), (targets.candidate_idxs >= 0).sum()]
        stats += [level.sum() for level in pos_mask.split(num_points_per_level, dim=1)]
        if num_gt > 0:
            # Positives per object of the batch (index_add: no data-dependent size).
            starts = device_vector(
                [sum(counts[:n]) for n in range(num_images)], torch.long, pos_mask.device
            )
            batch_idxs = (targets.matched_idxs.clamp(min=0) + starts[:, None]).clamp(
                max=num_gt - 1
            )
            per_object = pos_mask.new_zeros(num_gt, dtype=torch.long).index_add_(
                0, batch_idxs.reshape(-1), pos_mask.reshape(-1).long()
            )
            stats.append((per_object == 0).sum())
        else:
            stats.append(pos_mask.new_zeros((), dtype=torch.long))
        values = torch.stack(stats).tolist()  # the one transfer
        num_pos, num_fcos_pos, per_level, without_pos = (
            values[0], values[1], values[2:-1], values[-1]
        )
        storage.put_scalar("pseudo_iou/num_pos_per_image", num_pos / num_images)
        storage.put_scalar("pseudo_iou/num_fcos_pos_per_image", num_fcos_pos / num_images)
        for name, value in zip(self.head_in_features, per_level):
            storage.put_scalar(f"pseudo_iou/num_pos_{name}", value / num_images)
        storage.put_scalar("pseudo_iou/num_pos_per_object", num_pos / max(num_gt, 1))
        storage.put_scalar("pseudo_iou/num_objects_without_pos", without_pos)

    # ------------------------------------------------------------------------------ inference
    def inference_score_terms(
        self, cls_logits: Tensor, quality_logits: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor]:
        """
        Threshold the class probability, score = cls x centerness (no square root), as mmdet's
        ``multiclass_nms(..., score_thr, score_factors=centerness)`` in the release.

        Args:
            cls_logits: (R, K); quality_logits: (R, 1) centerness logits, or None.
        Returns:
            scores: (R, K) sigmoid(cls) x sigmoid(centerness) (sigmoid(cls) without it);
            thresholded: (R, K) sigmoid(cls).
        """
        cls_prob = cls_logits.sigmoid()
        scores = cls_prob if quality_logits is None else cls_prob * quality_logits.sigmoid()
        return scores, cls_prob


def build_assigner(cfg) -> PointAssigner:
    """The :class:`PointAssigner` of ``cfg.MODEL.PSEUDO_IOU`` (values checked, errors name keys)."""
    pcfg = cfg.MODEL.PSEUDO_IOU
    return PointAssigner(
        assigner=pcfg.ASSIGNER,
        pseudo_iou_thresh=pcfg.PSEUDO_IOU_THRESH,
        thresh_inclusive=pcfg.THRESH_INCLUSIVE,
        centerness_thresh=pcfg.CENTERNESS_THRESH,
        scaled_box_factor=pcfg.SCALED_BOX_FACTOR,
        inside_strict=pcfg.INSIDE_STRICT,
        size_ranges=(
            size_ranges_from_sizes(pcfg.SIZES_OF_INTEREST) if pcfg.USE_SCALE_RANGES else None
        ),
        tie_break=pcfg.TIE_BREAK,
    )


def _key(name: str, python: str) -> ConfigKey:
    return ConfigKey(f"MODEL.PSEUDO_IOU.{name}", f"model.{python}")


def _check_settings(
    *,
    num_classes: int,
    focal_loss_alpha: float,
    focal_loss_gamma: float,
    reg_loss_type: str,
    reg_loss_weight: float,
    test_score_thresh: float,
    test_topk_candidates: int,
    test_nms_thresh: float,
) -> None:
    """The checks of the detector's own settings (the assigner's are ``PointAssigner``'s, the
    head's ``AnchorFreeHead``'s): errors name the yacs key and the Python-config attribute."""
    check_min(_key("NUM_CLASSES", "num_classes"), num_classes, 1)
    check_interval(_key("FOCAL_LOSS_ALPHA", "focal_loss_alpha"), focal_loss_alpha, 0, 1)
    check_min(_key("FOCAL_LOSS_GAMMA", "focal_loss_gamma"), focal_loss_gamma, 0)
    check_choice(_key("REG_LOSS", "reg_loss_type"), reg_loss_type, REG_LOSSES)
    check_min(_key("REG_LOSS_WEIGHT", "reg_loss_weight"), reg_loss_weight, 0)
    check_interval(
        _key("SCORE_THRESH_TEST", "test_score_thresh"), test_score_thresh, 0, 1, closed="left"
    )
    check_min(_key("TOPK_CANDIDATES_TEST", "test_topk_candidates"), test_topk_candidates, 1)
    check_interval(_key("NMS_THRESH_TEST", "test_nms_thresh"), test_nms_thresh, 0, 1)
