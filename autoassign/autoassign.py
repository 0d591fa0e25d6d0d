"""AutoAssign: Differentiable Label Assignment for Dense Object Detection (Zhu et al., 2020),
as released by its authors (cvpods, 40.5 AP R-50 1x), on Detectron2's ``DenseDetector``.

Release: ``Megvii-BaseDetection/AutoAssign``, ``auto_assign.res50.fpn.coco.800size.1x/
auto_assign.py`` (``AutoAssign.losses``; the same file as cvpods'
``cvpods/modeling/meta_arch/auto_assign.py``). The loss is computed on the in-box (object,
location) pairs only (:mod:`autoassign.loss`); memory and time grow with their number, not with
G x L.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from anchor_free.config import ConfigKey, check_choice, check_interval, check_min
from anchor_free.distributed import reduce_mean
from anchor_free.head import AnchorFreeHead
from anchor_free.inbox import InboxPairs, device_vector, inbox_pairs, location_strides
from anchor_free.meta_arch import (
    AnchorFreeDetector,
    autocast_disabled,
    build_backbone_for_head,
    build_point_generator,
    check_ground_truth,
)
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList, Instances

from .center_prior import CenterPrior
from .config import (
    CONFIDENCE_CHOICES,
    OBJECTNESS_CHOICES,
    SCORE_THRESH_ON_CHOICES,
)
from .loss import (
    EPS,
    PositiveTerms,
    center_offsets,
    explicit_objectness_loss,
    localization_likelihood,
    negative_bag_loss,
    negative_box_prob,
    positive_terms,
)

__all__ = ["AutoAssign"]


@META_ARCH_REGISTRY.register()
class AutoAssign(AnchorFreeDetector):
    """
    ResNet-FPN P3-P7 + :class:`AnchorFreeHead` (conv bias, GN, prior 0.02, box bias 4.0, ImpObj on
    the box tower) + a learnable center prior. Points sit at (j * s, i * s) (no half-stride
    offset); predicted boxes are ``ReLU(Scale_l(conv)) * stride`` ltrb around them.

    Training losses (the release's ``AutoAssign.losses``; paper Eq. 6 and Sec. 3.4 give no
    normalisers), G objects summed over the batch and all-reduced over workers:

    * ``loss_pos = alpha * sum_objects -log(sum_i w+_i P+_i) / max(1, mean #objects per worker)``
    * ``loss_neg = (1 - alpha) * sum_{loc, class} FL(P(cls) * w-) / max(1, mean in-box prior mass)``
    * ``loss_norm = NORM_LOSS_WEIGHT * mean_images(#objects / sum of the in-box prior)``
    * ``loss_obj`` (only with explicit objectness): BCE of the objectness, 1 inside any box.

    Edge cases (the release divides by a 1e-12 clamp there):

    * an object without any location strictly inside its box (narrower than the P3 grid step)
      has no candidates: it adds 0 to ``loss_pos`` (the release adds a constant 100 without
      gradient) but still counts in the ``loss_pos`` normaliser and in ``loss_norm``'s numerator;
    * an image whose objects have no in-box location at all, or no objects, adds 0 to the
      ``loss_norm`` mean (the release gives #objects / 1e-12, or crashes on 0 objects); its
      locations are all negatives with w- = 1;
    * zero-valued terms keep the box branch and mu/sigma in the graph, so every loss is finite
      and every parameter gets a (possibly zero) gradient on every worker.

    At test time only ``inference_score_terms`` (cls x obj, no square root) and the base class's
    threshold (on cls x obj, ``test_score_thresh``) / per-level candidates (as released: the
    ``min(test_topk_candidates, H_l x W_l)`` best pairs, then the threshold) / decode /
    class-aware NMS run, with no clipping before NMS (as released); no weighting or assignment
    code does.

    Mixed precision: ``forward_training`` runs with autocast disabled on float32 head outputs
    (mmdet's AutoAssign port: ``@force_fp32`` on ``loss``; the release trains in float32 only).
    """

    CONFIG_NODE = "MODEL.AUTOASSIGN"

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        head_in_features: List[str],
        point_generator,
        center_prior: CenterPrior,
        num_classes: int,
        confidence: str = "joint",
        objectness: str = "implicit",
        tau: float = 1.0 / 3.0,
        loc_lambda: float = 5.0,
        use_pos_weights: bool = True,
        use_neg_weights: bool = True,
        norm_loss_weight: float = 0.75,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        input_format: str = "BGR",
        vis_period: int = 0,
        score_thresh_on: str = "cls_obj",
        clip_boxes_before_nms: bool = False,
        test_topk_candidates_rule: str = "cvpods",
    ):
        """
        Args:
            backbone, head, head_in_features, point_generator, num_classes, test_*,
                max_detections_per_image, pixel_mean, pixel_std, input_format, vis_period:
                see :class:`AnchorFreeDetector`.
            score_thresh_on: "cls_obj" (release: ``test_score_thresh`` on cls x obj) or "cls"
                (mmdetection: on the class probability, the score being cls x obj).
            clip_boxes_before_nms: clip the boxes and drop those left empty before NMS
                (mmdetection); the release clips after NMS only. ``head`` must return
                objectness logits unless ``objectness == "none"``.
            test_topk_candidates_rule: each level's candidates (``TOPK_CANDIDATES_RULE``):
                "cvpods" (release), "mmdet3" (mmdetection), "detectron2" (FCOS) or "mmdet2";
                see ``anchor_free.meta_arch.TOPK_CANDIDATES_RULES``.
            center_prior: the center weighting module (owns mu and sigma).
            confidence: "joint", "cls_only", "loc_only" or "none" (see ``positive_terms``).
            objectness: "implicit", "none" or "explicit".
            tau: temperature of exp(P / tau), > 0.
            loc_lambda: lambda of P(loc) = exp(-lambda * GIoU loss).
            use_pos_weights, use_neg_weights: w+ and w- on (True) or uniform / 1 (False).
            norm_loss_weight: weight of loss_norm.
            focal_loss_alpha: loss_pos x alpha, loss_neg x (1 - alpha).
            focal_loss_gamma: focal exponent of the negative loss.
        """
        _check_settings(
            num_classes=num_classes,
            confidence=confidence,
            objectness=objectness,
            score_thresh_on=score_thresh_on,
            tau=tau,
            loc_lambda=loc_lambda,
            norm_loss_weight=norm_loss_weight,
            focal_loss_alpha=focal_loss_alpha,
            focal_loss_gamma=focal_loss_gamma,
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
            clip_boxes_before_nms=clip_boxes_before_nms,
            drop_empty_boxes_before_nms=clip_boxes_before_nms,
            test_topk_candidates_rule=test_topk_candidates_rule,
        )
        self.score_thresh_on = score_thresh_on
        has_objectness = getattr(head, "quality", None) is not None
        if has_objectness != (objectness != "none"):
            raise ValueError(
                f"{_key('OBJECTNESS', 'objectness')} is {objectness!r} but the head has "
                f"{'an' if has_objectness else 'no'} objectness branch: build it with "
                f"use_quality={objectness != 'none'} (Python config: model.head.use_quality)"
            )
        self.center_prior = center_prior
        self.confidence = confidence
        self.objectness = objectness
        self.tau = tau
        self.loc_lambda = loc_lambda
        self.use_pos_weights = use_pos_weights
        self.use_neg_weights = use_neg_weights
        self.norm_loss_weight = norm_loss_weight
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma

    @classmethod
    def from_config(cls, cfg):
        aa = cfg.MODEL.AUTOASSIGN
        backbone, feature_shapes = build_backbone_for_head(
            cfg, aa.IN_FEATURES, "MODEL.AUTOASSIGN.IN_FEATURES"
        )
        head = AnchorFreeHead(
            input_shape=feature_shapes,
            num_classes=aa.NUM_CLASSES,
            num_convs=aa.NUM_CONVS,
            norm=aa.NORM,
            conv_bias=True,
            prior_prob=aa.PRIOR_PROB,
            bbox_bias_init=aa.BBOX_BIAS_INIT,
            use_quality=aa.OBJECTNESS != "none",
            quality_on_box_tower=True,
        )
        center_prior = CenterPrior(
            aa.NUM_CLASSES,
            mode=aa.CENTER_PRIOR,
            mu_init=aa.MU_INIT,
            sigma_init=aa.SIGMA_INIT,
            freeze_mu=aa.FREEZE_MU,
            freeze_sigma=aa.FREEZE_SIGMA,
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": list(aa.IN_FEATURES),
            # Points at (j * s, i * s): the release's ShiftGenerator OFFSET = 0.0.
            "point_generator": build_point_generator([s.stride for s in feature_shapes], 0.0),
            "center_prior": center_prior,
            "confidence": aa.CONFIDENCE,
            "objectness": aa.OBJECTNESS,
            "tau": aa.TAU,
            "loc_lambda": aa.LOC_LAMBDA,
            "use_pos_weights": aa.USE_POS_WEIGHTS,
            "use_neg_weights": aa.USE_NEG_WEIGHTS,
            "norm_loss_weight": aa.NORM_LOSS_WEIGHT,
            "focal_loss_alpha": aa.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": aa.FOCAL_LOSS_GAMMA,
            "score_thresh_on": aa.SCORE_THRESH_ON,
            "clip_boxes_before_nms": aa.CLIP_BOXES_BEFORE_NMS,
            **cls.base_kwargs_from_config(cfg, aa),
        }

    # ------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------
    def dense_outputs(
        self,
        features: List[Tensor],
        predictions: Tuple[List[Tensor], List[Tensor], Optional[List[Tensor]]],
    ) -> Dict[str, object]:
        """
        Head outputs of all levels concatenated, with the geometry the loss needs.

        Returns a dict with:
            grid_sizes: per level (H_l, W_l); points: (L, 2) pixels;
            cls_prob: (N, L, K) sigmoid(cls); obj_logits: (N, L) or None;
            confidence_prob: (N, L, K) P(cls) = sigmoid(cls) x sigmoid(obj) with implicit
                objectness, sigmoid(cls) otherwise;
            pred_ltrb: (N, L, 4) predicted distances in pixels (head output x stride).
        """
        cls_logits, box_ltrb, obj_logits = self.transpose_head_outputs(predictions)
        grid_sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        points = torch.cat([b.get_centers() for b in self.point_generator(features)], dim=0)
        strides = location_strides(grid_sizes, self.strides, points.device)  # (L,)
        cls_prob = torch.cat(cls_logits, dim=1).float().sigmoid()  # (N, L, K)
        pred_ltrb = torch.cat(box_ltrb, dim=1).float() * strides[None, :, None]  # (N, L, 4)
        obj = None if obj_logits is None else torch.cat(obj_logits, dim=1)[..., 0].float()
        if self.objectness == "implicit":
            confidence_prob = cls_prob * obj.sigmoid()[..., None]
        else:
            confidence_prob = cls_prob
        return {
            "grid_sizes": grid_sizes,
            "points": points,
            "cls_prob": cls_prob,
            "obj_logits": obj,
            "confidence_prob": confidence_prob,
            "pred_ltrb": pred_ltrb,
        }

    def positive_terms_single_image(
        self,
        confidence_prob: Tensor,
        pred_ltrb: Tensor,
        gt_boxes: Tensor,
        gt_classes: Tensor,
        grid_sizes: List[Tuple[int, int]],
        points: Optional[Tensor] = None,
    ) -> Tuple[InboxPairs, PositiveTerms]:
        """
        In-box pairs, center prior, confidences and positive weights of one image (paper
        Sec. 3.2-3.3), as :meth:`forward_training` computes them for the batch (the
        visualiser's entry).

        Args:
            confidence_prob: (L, K) P(cls); pred_ltrb: (L, 4) pixels.
            gt_boxes: (G, 4) XYXY pixels; gt_classes: (G,) long.
            points: (L, 2) the point generator's points (``dense_outputs``'s "points");
                default the grid formula, bitwise the same for AutoAssign's offset 0.
        """
        pairs = inbox_pairs(
            gt_boxes, grid_sizes, self.strides, self.point_generator.offset, points=points
        )
        pair_classes = gt_classes[pairs.gt_idx]
        terms = self._pair_terms(
            pairs, pair_classes, confidence_prob[pairs.loc_idx, pair_classes],
            pred_ltrb[pairs.loc_idx], gt_boxes.shape[0],
        )  # fmt: skip
        return pairs, terms

    def _pair_terms(
        self, pairs: InboxPairs, pair_classes: Tensor, p_cls: Tensor, pair_pred_ltrb: Tensor,
        num_gt: int,
    ):  # fmt: skip
        """Center prior, P(loc) and the positive terms of the (M,) in-box pairs, given each
        pair's class (M,), classification confidence (M,) and predicted ltrb (M, 4)."""
        prior = self.center_prior(center_offsets(pairs), pair_classes)
        p_loc = localization_likelihood(pair_pred_ltrb, pairs.ltrb, self.loc_lambda)
        return positive_terms(
            p_cls=p_cls,
            p_loc=p_loc,
            prior=prior,
            gt_idx=pairs.gt_idx,
            num_gt=num_gt,
            confidence=self.confidence,
            tau=self.tau,
            use_pos_weights=self.use_pos_weights,
        )

    @autocast_disabled
    def forward_training(
        self,
        images: ImageList,
        features: List[Tensor],
        predictions: Tuple[List[Tensor], List[Tensor], Optional[List[Tensor]]],
        gt_instances: List[Instances],
    ) -> Dict[str, Tensor]:
        """
        The losses of the batch, computed on the in-box pairs of all images at once (object
        indices over the batch, locations as (image, location)): no per-image or per-object
        host synchronisation (one for the ground-truth check, three in ``inbox_pairs``).

        Args:
            images: the batch; features: per level (N, C, H_l, W_l);
            predictions: head outputs (cls, ltrb, objectness) per level;
            gt_instances: per image, ``gt_boxes`` (G, 4) in input pixels and ``gt_classes`` (G,).
        Returns:
            dict with loss_pos, loss_neg, loss_norm (and loss_obj with explicit objectness).
        """
        out = self.dense_outputs(features, predictions)
        confidence_prob, pred_ltrb = out["confidence_prob"], out["pred_ltrb"]
        num_images, num_locations, num_classes = confidence_prob.shape
        device = pred_ltrb.device
        check_ground_truth(gt_instances, self.num_classes)
        counts = [len(x) for x in gt_instances]
        gt_boxes = torch.cat([x.gt_boxes.tensor for x in gt_instances]).float()  # (G, 4)
        gt_classes = torch.cat([x.gt_classes for x in gt_instances]).long()  # (G,)
        box_image = torch.cat(
            [torch.full((c,), n, dtype=torch.long, device=device) for n, c in enumerate(counts)]
        )
        pairs = inbox_pairs(
            gt_boxes, out["grid_sizes"], self.strides, self.point_generator.offset,
            points=out["points"],
        )
        # Gathers with index_select (backward: index_add), much faster than advanced indexing
        # on the CPU.
        pair_image = box_image.index_select(0, pairs.gt_idx)  # (M,)
        flat_loc = pair_image * num_locations + pairs.loc_idx  # (M,) (image, location)
        pair_classes = gt_classes.index_select(0, pairs.gt_idx)
        terms = self._pair_terms(
            pairs,
            pair_classes,
            confidence_prob.reshape(-1).index_select(0, flat_loc * num_classes + pair_classes),
            pred_ltrb.reshape(-1, 4).index_select(0, flat_loc),
            gt_boxes.shape[0],
        )
        # Per image: in-box prior mass and whether it has any pair. (N,) each.
        # Accumulated in float64: index_add adds sequentially, whose float32 rounding error
        # grows with the number of pairs (the previous per-image terms.prior.sum() did not).
        wide = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        prior_sum = (
            pred_ltrb.new_zeros(num_images, dtype=wide)
            .index_add(0, pair_image, terms.prior.to(wide))
            .to(pred_ltrb.dtype)
        )
        has_pairs = torch.zeros(num_images, dtype=torch.bool, device=device)
        has_pairs[pair_image] = True
        num_gt = device_vector(counts, pred_ltrb.dtype, device)
        norm_terms = torch.where(
            has_pairs, num_gt / prior_sum.clamp(min=EPS), prior_sum * 0.0
        )  # images without pairs add 0 (see the class docstring)

        neg_prob = confidence_prob
        if self.use_neg_weights:
            box_prob, _ = negative_box_prob(
                points=out["points"],
                pred_ltrb=pred_ltrb.detach(),
                gt_boxes=gt_boxes,
                gt_classes=gt_classes,
                pairs=pairs,
                num_classes=self.num_classes,
                boxes_per_image=counts,
            )  # (N, L, K)
            neg_prob = neg_prob * (1.0 - box_prob)
        inside_any = pred_ltrb.new_zeros(num_images * num_locations)
        inside_any[flat_loc] = 1.0

        num_fg = reduce_mean(pred_ltrb.new_full((), float(sum(counts)))).clamp(min=1.0)
        num_bg = reduce_mean(prior_sum.sum().detach()).clamp(min=1.0)
        # Zero-valued term: the box branch gets a gradient even when no object has pairs.
        zero_box = pred_ltrb.sum() * 0.0
        losses = {
            "loss_pos": self.focal_loss_alpha * (terms.loss.sum() + zero_box) / num_fg,
            "loss_neg": (1.0 - self.focal_loss_alpha)
            * negative_bag_loss(neg_prob, self.focal_loss_gamma).sum()
            / num_bg,
            "loss_norm": self.norm_loss_weight * norm_terms.mean()
            + self.center_prior.zero_grad_term(pred_ltrb),
        }
        if self.objectness == "explicit":
            losses["loss_obj"] = explicit_objectness_loss(
                out["obj_logits"], inside_any.view(num_images, num_locations)
            )
        return losses

    # ------------------------------------------------------------------------------------------
    # Inference
    # ------------------------------------------------------------------------------------------
    def inference_score_terms(
        self, cls_logits: Tensor, quality_logits: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor]:
        """
        Args:
            cls_logits: (R, K); quality_logits: (R, 1) objectness logits or None.
        Returns:
            scores: (R, K) sigmoid(cls) x sigmoid(obj) (no square root, the release's
            ``AutoAssign.inference_single_image``); sigmoid(cls) without an objectness branch.
            thresholded: (R, K) the scores (release), or with ``score_thresh_on == "cls"``
            (mmdetection) the class probabilities.
        """
        cls_prob = cls_logits.sigmoid()
        scores = cls_prob
        if quality_logits is not None:
            scores = scores * quality_logits.sigmoid()
        return scores, (cls_prob if self.score_thresh_on == "cls" else scores)


def _key(name: str, python: str) -> ConfigKey:
    return ConfigKey(f"MODEL.AUTOASSIGN.{name}", f"model.{python}")


def _check_settings(
    *,
    num_classes: int,
    confidence: str,
    objectness: str,
    score_thresh_on: str,
    tau: float,
    loc_lambda: float,
    norm_loss_weight: float,
    focal_loss_alpha: float,
    focal_loss_gamma: float,
    test_topk_candidates: int,
    test_nms_thresh: float,
) -> None:
    """The checks of the detector's own settings (the center prior's are ``CenterPrior``'s, the
    head's ``AnchorFreeHead``'s): errors name the yacs key and the Python-config attribute."""
    check_choice(_key("CONFIDENCE", "confidence"), confidence, CONFIDENCE_CHOICES)
    check_choice(_key("OBJECTNESS", "objectness"), objectness, OBJECTNESS_CHOICES)
    check_choice(
        _key("SCORE_THRESH_ON", "score_thresh_on"), score_thresh_on, SCORE_THRESH_ON_CHOICES
    )
    check_min(_key("TAU", "tau"), tau, 0, strict=True)
    check_min(_key("NUM_CLASSES", "num_classes"), num_classes, 0, strict=True)
    check_min(
        _key("TOPK_CANDIDATES_TEST", "test_topk_candidates"), test_topk_candidates, 0, strict=True
    )
    check_interval(_key("FOCAL_LOSS_ALPHA", "focal_loss_alpha"), focal_loss_alpha, 0, 1)
    check_interval(_key("NMS_THRESH_TEST", "test_nms_thresh"), test_nms_thresh, 0, 1)
    check_min(_key("LOC_LAMBDA", "loc_lambda"), loc_lambda, 0)
    check_min(_key("FOCAL_LOSS_GAMMA", "focal_loss_gamma"), focal_loss_gamma, 0)
    check_min(_key("NORM_LOSS_WEIGHT", "norm_loss_weight"), norm_loss_weight, 0)
