"""
What is measured: the four detectors on one shared backbone, the random input batches, and the
calls that are timed or counted (train step, inference, assignment + loss, post-processing).

* PseudoIoU / AutoAssign: ``anchor_free_app.config.setup_cfg("configs/Base-<Arch>.yaml", opts)``
  + ``detectron2.modeling.build_model``; without the config file, the project defaults
  (``get_project_cfg``) with that META_ARCHITECTURE (a warning says so).
* RetinaNet: Detectron2's model-zoo ``COCO-Detection/retinanet_R_50_FPN_1x.yaml`` (9 anchors per
  location) built by ``build_model``, with the shared backbone.
* FCOS: ``detectron2.modeling.meta_arch.fcos.FCOS`` built in Python (it has no yacs
  ``from_config``) with the settings of Detectron2's ``configs/common/models/fcos.py``; its
  GroupNorm head through :func:`build_fcos_head` (Detectron2 v0.6 workaround, Detectron2 itself
  is not patched).

Every backbone is ResNet-FPN P3-P7 (``build_anchor_free_resnet_fpn_backbone``, FrozenBN, stem +
res2 frozen, P6 from P5 as in FCOS), randomly initialised from the same seed: identical weights.
"""
import logging
import math
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from detectron2.layers import ShapeSpec, get_norm
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from .settings import ASPECT, HEAD_IN_FEATURES, MODEL_NAMES, REPO_ROOT, BenchSettings
from .timing import device_sync

__all__ = [
    "assign_loss",
    "backbone_features",
    "backbone_opts",
    "build_fcos_head",
    "build_model",
    "build_models",
    "head_outputs",
    "inference",
    "make_batch",
    "postprocess",
    "random_boxes",
    "same_backbones",
    "short_side_size",
    "train_step",
]

logger = logging.getLogger("benchmark")

# The yacs subtree of each yacs-built model: the benchmark sets its NUM_CLASSES, NUM_CONVS
# and SCORE_THRESH_TEST.
_CFG_NODES = {"PseudoIoU": "PSEUDO_IOU", "AutoAssign": "AUTOASSIGN", "RetinaNet": "RETINANET"}


# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------
def backbone_opts(s: BenchSettings) -> List[Any]:
    """yacs ``KEY VALUE`` overrides that give every model the same backbone and device."""
    return [
        "MODEL.DEVICE", s.device,
        "MODEL.WEIGHTS", "",
        "MODEL.BACKBONE.NAME", "build_anchor_free_resnet_fpn_backbone",
        "MODEL.BACKBONE.FREEZE_AT", 2,
        "MODEL.RESNETS.DEPTH", s.depth,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 64 if s.depth in (18, 34) else 256,
        "MODEL.RESNETS.NORM", "FrozenBN",
        "MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False, False, False, False],
        "MODEL.RESNETS.OUT_FEATURES", ["res3", "res4", "res5"],
        "MODEL.FPN.IN_FEATURES", ["res3", "res4", "res5"],
        "MODEL.FPN.OUT_CHANNELS", s.fpn_channels,
        "MODEL.FPN.TOP_BLOCK_IN_FEATURE", s.top_block_in_feature,
    ]  # fmt: skip


def build_fcos_head(
    input_shape: List[ShapeSpec], num_classes: int, num_convs: int, norm: str = "GN",
    prior_prob: float = 0.01,
) -> nn.Module:
    """
    Detectron2's ``FCOSHead`` with a norm layer after each tower conv, buildable on v0.6 and
    main alike: v0.6's ``RetinaNetHead.__init__`` probes ``get_norm(norm, 1)`` (GroupNorm(32, 1)
    is invalid on torch >= 1.12), so the head is built with ``norm=""`` and
    ``get_norm(norm, C)`` is inserted after every ``Conv2d`` of ``cls_subnet``/``bbox_subnet``:
    the layout, names and init of ``FCOSHead(norm="GN")`` on Detectron2 main.
    """
    from detectron2.modeling.meta_arch.fcos import FCOSHead

    channels = input_shape[0].channels
    head = FCOSHead(
        input_shape=input_shape,
        conv_dims=[channels] * num_convs,
        num_classes=num_classes,
        norm="",
        prior_prob=prior_prob,
    )
    if norm:
        for name in ("cls_subnet", "bbox_subnet"):
            layers: List[nn.Module] = []
            for layer in getattr(head, name):
                layers.append(layer)
                if isinstance(layer, nn.Conv2d):
                    layers.append(get_norm(norm, layer.out_channels))
            setattr(head, name, nn.Sequential(*layers))
    return head


def _project_cfg(s: BenchSettings, meta_arch: str, config_file: Optional[str]):
    from anchor_free_app.config import get_project_cfg, setup_cfg

    opts = backbone_opts(s)
    if meta_arch in _CFG_NODES:
        node = f"MODEL.{_CFG_NODES[meta_arch]}"
        opts += [f"{node}.NUM_CLASSES", s.num_classes, f"{node}.NUM_CONVS", s.num_convs,
                 f"{node}.SCORE_THRESH_TEST", s.score_thresh]
    if config_file is not None:
        path = config_file if os.path.isabs(config_file) else os.path.join(REPO_ROOT, config_file)
        if os.path.isfile(path):
            cfg = setup_cfg(path, opts, freeze=False)
            if cfg.MODEL.META_ARCHITECTURE != meta_arch:
                raise ValueError(f"{path}: MODEL.META_ARCHITECTURE is "
                                 f"{cfg.MODEL.META_ARCHITECTURE!r}, expected {meta_arch!r}")
            return cfg
        logger.warning(f"{path} not found: building {meta_arch} from the project defaults.")
    cfg = get_project_cfg()
    cfg.MODEL.META_ARCHITECTURE = meta_arch
    cfg.merge_from_list(opts)
    return cfg


def build_model(name: str, s: BenchSettings) -> nn.Module:
    """One of ``MODEL_NAMES`` on the shared backbone (seeded: identical backbone weights)."""
    from detectron2.modeling import build_backbone
    from detectron2.modeling import build_model as d2_build_model

    torch.manual_seed(s.seed)  # the backbone is built first: same weights in every model
    if name in ("PseudoIoU", "AutoAssign"):
        model = d2_build_model(_project_cfg(s, name, s.configs.get(name)))
    elif name == "RetinaNet":
        from detectron2 import model_zoo

        # Detectron2's model-zoo RetinaNet (3 scales x 3 ratios per level, its IoU thresholds
        # and loss) with the shared backbone.
        config = model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
        model = d2_build_model(_project_cfg(s, "RetinaNet", config))
    elif name == "FCOS":
        from detectron2.modeling.meta_arch.fcos import FCOS

        cfg = _project_cfg(s, "FCOS", None)  # backbone keys only
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        # Settings of detectron2 configs/common/models/fcos.py (+ the common score threshold).
        model = FCOS(
            backbone=backbone,
            head=build_fcos_head(
                [shapes[f] for f in HEAD_IN_FEATURES], s.num_classes, s.num_convs
            ),
            head_in_features=HEAD_IN_FEATURES,
            num_classes=s.num_classes,
            test_score_thresh=s.score_thresh,
            test_topk_candidates=1000,
            test_nms_thresh=0.6,
            max_detections_per_image=100,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
        ).to(torch.device(s.device))
    else:
        raise ValueError(f"Unknown model {name!r}; choose from {list(MODEL_NAMES)}")
    return model


def build_models(s: BenchSettings) -> Tuple[Dict[str, nn.Module], Dict[str, str]]:
    """Models that could be built, and the build error of the others."""
    models, errors = {}, {}
    for name in s.models:
        try:
            models[name] = build_model(name, s)
        except Exception as e:  # a model under development must not stop the others
            logger.exception(f"Could not build {name}")
            errors[name] = f"{type(e).__name__}: {e}"
    return models, errors


def same_backbones(models: Dict[str, nn.Module]) -> bool:
    """Whether all models' backbones have identical parameters and buffers."""
    states = [m.backbone.state_dict() for m in models.values()]
    return all(
        s.keys() == states[0].keys() and all(torch.equal(s[k], states[0][k]) for k in s)
        for s in states[1:]
    )


# ------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------
def random_boxes(num: int, height: int, width: int, generator: torch.Generator) -> Tensor:
    """
    (num, 4) XYXY float boxes inside a ``height`` x ``width`` image: sides log-uniform in
    [8, min(height, width)] px, aspect ratio log-uniform in [1/3, 3], uniform position.
    """
    short = float(min(height, width))
    lo, hi = math.log(min(8.0, short)), math.log(short)
    size = torch.exp(lo + (hi - lo) * torch.rand(num, generator=generator))
    ratio = torch.exp(math.log(3.0) * (2 * torch.rand(num, generator=generator) - 1))
    w = (size * ratio.sqrt()).clamp(2.0, width - 1.0)
    h = (size / ratio.sqrt()).clamp(2.0, height - 1.0)
    x0 = (width - w) * torch.rand(num, generator=generator)
    y0 = (height - h) * torch.rand(num, generator=generator)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def make_batch(
    batch_size: int, height: int, width: int, boxes: int, num_classes: int, seed: int
) -> List[Dict[str, Any]]:
    """Detectron2 ``batched_inputs``: random uint8 BGR images with ``boxes`` random GT boxes."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(batch_size):
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(random_boxes(boxes, height, width, g))
        instances.gt_classes = torch.randint(0, num_classes, (boxes,), generator=g)
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)
        batch.append({"image": image, "height": height, "width": width, "instances": instances})
    return batch


def short_side_size(short: int) -> Tuple[int, int]:
    """(height, width) of an image with short side ``short`` and the default aspect ratio."""
    return short, int(round(short * ASPECT))


# ------------------------------------------------------------------------------------------
# The measured calls
# ------------------------------------------------------------------------------------------
def _flat(predictions) -> List[Tensor]:
    return [t for group in predictions if group is not None for t in group]


def _as_leaves(predictions):
    """Nested head outputs -> the same structure of detached leaves that require grad."""
    out = []
    for group in predictions:
        out.append(None if group is None else [t.detach().requires_grad_(True) for t in group])
    return tuple(out)


@torch.no_grad()
def backbone_features(model: nn.Module, batched_inputs: List[Dict[str, Any]]):
    """(images, features) as ``DenseDetector.forward`` computes them."""
    model.train()
    images = model.preprocess_image(batched_inputs)
    all_features = model.backbone(images.tensor)
    return images, [all_features[f] for f in model.head_in_features]


@torch.no_grad()
def head_outputs(model: nn.Module, batched_inputs: List[Dict[str, Any]], images_features=None):
    """
    What ``DenseDetector.forward`` passes to ``forward_training``: (images, features,
    predictions as detached leaves that require grad, gt_instances). ``images_features``:
    precomputed ``backbone_features`` (models with identical backbones give identical ones).
    """
    images, features = images_features or backbone_features(model, batched_inputs)
    model.train()
    predictions = _as_leaves(model.head(features))
    gt_instances = [x["instances"].to(model.device) for x in batched_inputs]
    return images, features, predictions, gt_instances


def train_step(model: nn.Module, batched_inputs) -> None:
    """``model(batched_inputs)`` in train mode + backward of the summed losses (gradients reset
    with ``set_to_none`` first, so their allocation is included; no optimizer step)."""
    model.train()
    model.zero_grad(set_to_none=True)
    with EventStorage():
        losses = model(batched_inputs)
        sum(losses.values()).backward()


@torch.no_grad()
def inference(model: nn.Module, batched_inputs) -> None:
    """Eval mode, ``model(batched_inputs)`` with decoding, NMS and ``detector_postprocess``."""
    model.eval()
    model(batched_inputs)


def assign_loss(model: nn.Module, inputs, device: torch.device) -> Tuple[float, float]:
    """forward_training + backward on precomputed head outputs (:func:`head_outputs`); returns
    (fwd s, fwd+bwd s), each timed from a device sync to a device sync."""
    images, features, predictions, gt_instances = inputs
    for t in _flat(predictions):
        t.grad = None
    with EventStorage():
        device_sync(device)
        start = time.perf_counter()
        losses = model.forward_training(images, features, predictions, gt_instances)
        device_sync(device)
        mid = time.perf_counter()
        sum(losses.values()).backward()
        device_sync(device)
        end = time.perf_counter()
    return mid - start, end - start


@torch.no_grad()
def postprocess(model: nn.Module, inputs, device: torch.device) -> float:
    """``forward_inference`` (scores, top-k, decode, NMS) on precomputed head outputs; returns
    seconds. The outputs are cloned first, untimed (FCOS applies ``sigmoid_`` in place)."""
    images, features, predictions, _ = inputs
    predictions = tuple(None if g is None else [t.detach().clone() for t in g]
                        for g in predictions)
    model.eval()
    device_sync(device)
    start = time.perf_counter()
    model.forward_inference(images, features, predictions)
    device_sync(device)
    return time.perf_counter() - start
