#!/usr/bin/env python
"""
Cost of Pseudo-IoU and AutoAssign next to Detectron2's own RetinaNet and FCOS, and how the label
assignment + loss grows with the number of objects and the image size.

    .venv/bin/python benchmarks/benchmark.py --output benchmarks/results       # = make bench

What is compared
    The four detectors are built in one process with the same backbone (ResNet-FPN P3-P7 from
    ``build_anchor_free_resnet_fpn_backbone``: R-50 by default, FrozenBN, stem + res2 frozen,
    P6 from P5 as in FCOS, random initialisation: ``MODEL.WEIGHTS ""``; every backbone gets the
    same initial weights), each with its own standard head (4 convs per tower; GN for FCOS,
    Pseudo-IoU and AutoAssign, none for RetinaNet, whose head predicts 9 anchors per location),
    80 classes, on the same input batch (800x1333 images with 20 random GT boxes each; 2 images
    on CUDA, 1 on the CPU by default), the same dtype (float32) and device (CUDA when present,
    else CPU).

    * PseudoIoU / AutoAssign: ``anchor_free.engine.setup_cfg("configs/Base-<Arch>.yaml", opts)``
      + ``detectron2.modeling.build_model``; without the config file, the project defaults
      (``get_project_cfg``) with that META_ARCHITECTURE (a warning says so).
    * RetinaNet: Detectron2's model-zoo ``COCO-Detection/retinanet_R_50_FPN_1x.yaml`` (9
      anchors per location) built by ``build_model``, with the shared backbone.
    * FCOS: ``detectron2.modeling.meta_arch.fcos.FCOS`` built in Python (it has no yacs
      ``from_config``) with the settings of Detectron2's ``configs/common/models/fcos.py``.
      **GroupNorm workaround:** on Detectron2 v0.6 ``RetinaNetHead.__init__`` (and so
      ``FCOSHead``) calls ``get_norm(norm, 1)``, i.e. ``GroupNorm(32, 1)``, which torch >= 1.12
      rejects. :func:`build_fcos_head` therefore builds ``FCOSHead(norm="")`` and inserts
      ``get_norm("GN", C)`` after every tower conv: the module layout (Conv2d with bias ->
      GroupNorm(32, C) -> ReLU), parameter names and initialisation are exactly those of
      ``FCOSHead(norm="GN")`` on Detectron2 main. Detectron2 itself is not patched.

    All four use the same inference score threshold (``--score-thresh``, default 0.0) and keep
    1000 candidates per level: with random weights no score would pass a usual 0.05 threshold
    for some models and all would pass it for others (FCOS ranks sqrt(cls x ctr)), so by
    default every level sends its top 1000 candidates to the class-aware NMS, the same
    worst-case load for every model. Each model keeps its own NMS IoU threshold and 100
    detections per image.

What is measured (interleaved A B C D A B C D ... after ``--warmup`` rounds; median)
    1. train step: ``model(batched_inputs)`` in train mode + backward of the summed losses
       (gradients reset with ``set_to_none`` first, so their allocation is included; no
       optimizer step);
    2. inference: ``model.eval()``, ``torch.no_grad()``, ``model(batched_inputs)`` including the
       decoding, NMS and ``detector_postprocess``;
    3. assignment + loss alone: everything after the head's outputs. Backbone + head run once
       (no grad); the outputs become detached leaf tensors; then
       ``model.forward_training(images, features, predictions, gt_instances)`` (the same call
       for all four) and the backward of its summed losses down to those leaves are timed
       ("fwd" = forward_training only, "fwd+bwd" = both; the targets use fwd+bwd);
       post-processing alone (``forward_inference`` on the same outputs) is timed the same way;
    4. peak memory of every timed call (median reported), as the increase over the memory in
       use when the call starts. CUDA: ``torch.cuda.max_memory_allocated``. CPU: torch's CPU
       allocator has no peak counter (and tracemalloc does not see it), so the peak resident
       set size is used: glibc's free lists are trimmed (``malloc_trim(0)``), the kernel's
       high-water mark is reset (``/proc/self/clear_refs`` = 5), and the result is ``VmHWM``
       after the call minus ``VmRSS`` before it (Linux only; else not reported). This set-up
       runs before the clock starts.
    The scaling sweep times 3. (fwd+bwd) and its peak memory per model for 1, 10, 100, 300
    and 1000 GT boxes per image at 800x1333, and for image short sides 512 / 800 / 1333 (long
    side x 1333/800) at ``--boxes`` boxes per image, on ``--sweep-batch-size`` (1) image. The
    backbones being identical, their features are computed once per image size.

Defaults: CUDA 2 images, 2 warm-up + 10 timed rounds (20 for assignment + loss and
post-processing), sweep 2 + 10; CPU 1 image, 1 + 5 rounds, sweep 0 + 1 (the main run has
warmed the same code paths up). About 5 minutes on 2 idle cores with 2 threads. Every
count is a flag (``--help``).

Outputs
    ``<output>/benchmark_<device>.json`` (settings, machine, every sample, medians, ratios to
    FCOS, the target checks, the sweep), ``<output>/benchmark_<device>.md`` (the tables as
    printed) and the scaling plot ``docs/benchmark_scaling_<device>.png`` (``--plot``).

Timings on a shared machine are noisy: the JSON keeps every sample and the load average before
and after the run. On a CPU shared with other processes, ``--threads 1`` avoids OpenMP threads
spinning against each other. GT boxes are random (seeded): log-uniform sizes from 8 px to the
image's short side, aspect ratios 1:3 to 3:1, inside the image, random classes.
"""
import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import logging
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run as a script from a checkout: import the project packages
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from detectron2.layers import ShapeSpec, get_norm  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

__all__ = [
    "MODEL_NAMES",
    "BenchSettings",
    "parse_args",
    "settings_from_args",
    "build_models",
    "build_fcos_head",
    "make_batch",
    "random_boxes",
    "PeakMemory",
    "run_benchmark",
    "main",
]

logger = logging.getLogger("benchmark")

MODEL_NAMES = ("PseudoIoU", "AutoAssign", "RetinaNet", "FCOS")
REFERENCE_MODEL = "FCOS"
HEAD_IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
BASE_CONFIGS = {
    "PseudoIoU": "configs/Base-PseudoIoU.yaml",
    "AutoAssign": "configs/Base-AutoAssign.yaml",
}
# The yacs subtree of each yacs-built model: the benchmark sets its NUM_CLASSES, NUM_CONVS
# and SCORE_THRESH_TEST.
_CFG_NODES = {"PseudoIoU": "PSEUDO_IOU", "AutoAssign": "AUTOASSIGN", "RetinaNet": "RETINANET"}
# Timed measurements of the main run, in table order.
TIMED_KEYS = ("train", "inference", "postprocess", "assign_loss_fwd", "assign_loss")
SWEEP_BOXES = (1, 10, 100, 300, 1000)
SWEEP_SHORT_SIDES = (512, 800, 1333)
ASPECT = 1333 / 800  # long / short side of the default image
MIB = float(1 << 20)


# ------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------
@dataclass
class BenchSettings:
    """Everything that defines a run (written to the JSON)."""

    device: str = "cpu"
    models: Tuple[str, ...] = MODEL_NAMES
    depth: int = 50
    fpn_channels: int = 256
    num_convs: int = 4
    top_block_in_feature: str = "p5"
    num_classes: int = 80
    batch_size: int = 2
    image_size: Tuple[int, int] = (800, 1333)
    boxes: int = 20
    score_thresh: float = 0.0
    warmup: int = 1
    iters: int = 3
    assign_iters: int = 5
    main_run: bool = True
    sweep: bool = True
    sweep_boxes: Tuple[int, ...] = SWEEP_BOXES
    sweep_short_sides: Tuple[int, ...] = SWEEP_SHORT_SIDES
    sweep_batch_size: int = 1
    sweep_iters: int = 3
    sweep_warmup: int = 1
    seed: int = 0
    threads: Optional[int] = None
    configs: Dict[str, str] = field(default_factory=lambda: dict(BASE_CONFIGS))
    output: str = os.path.join(REPO_ROOT, "benchmarks", "results")
    plot: Optional[str] = None  # default: docs/benchmark_scaling_<device>.png


def _int_list(text: str) -> Tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "benchmarks", "results"),
                        help="folder of the JSON and markdown results")
    parser.add_argument("--plot", default=None,
                        help="scaling plot PNG (default docs/benchmark_scaling_<device>.png; "
                             "'' for none)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default=",".join(MODEL_NAMES),
                        help=f"comma-separated subset of {','.join(MODEL_NAMES)}")
    parser.add_argument("--depth", type=int, default=50, choices=(18, 34, 50, 101, 152),
                        help="ResNet depth of the shared backbone")
    parser.add_argument("--fpn-channels", type=int, default=256,
                        help="FPN and head width (a multiple of 32 for GroupNorm)")
    parser.add_argument("--num-convs", type=int, default=4, help="convs per head tower")
    parser.add_argument("--top-block-in-feature", default="p5", choices=("p5", "res5"),
                        help="input of P6 in the shared backbone (FCOS: p5)")
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per batch (default: 2 on CUDA, 1 on the CPU)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(800, 1333),
                        metavar=("H", "W"))
    parser.add_argument("--boxes", type=int, default=20, help="GT boxes per image")
    parser.add_argument("--score-thresh", type=float, default=0.0,
                        help="inference score threshold of all four models")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds over all models before the timed ones "
                             "(default: 2 on CUDA, 1 on the CPU)")
    parser.add_argument("--iters", type=int, default=None,
                        help="timed rounds (A B C D each) of the train step and inference; "
                             "the median is reported (default: 10 on CUDA, 5 on the CPU)")
    parser.add_argument("--assign-iters", type=int, default=None,
                        help="timed rounds of assignment + loss and of post-processing "
                             "(default: 20 on CUDA, 5 on the CPU)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the scaling sweep")
    parser.add_argument("--sweep-only", action="store_true",
                        help="only the scaling sweep (no train / inference measurements)")
    parser.add_argument("--sweep-boxes", type=_int_list, default=SWEEP_BOXES,
                        help="GT boxes per image of the sweep (at --image-size)")
    parser.add_argument("--sweep-short-sides", type=_int_list, default=SWEEP_SHORT_SIDES,
                        help="image short sides of the sweep (long side x 1333/800)")
    parser.add_argument("--sweep-batch-size", type=int, default=None,
                        help="images per sweep batch (default 1: the figures are per image)")
    parser.add_argument("--sweep-iters", type=int, default=None,
                        help="timed rounds per sweep point (default: 10 on CUDA, 1 on the CPU)")
    parser.add_argument("--sweep-warmup", type=int, default=None,
                        help="untimed rounds per sweep point (default: 2 on CUDA, 0 on the CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--pseudo-iou-config", default=BASE_CONFIGS["PseudoIoU"])
    parser.add_argument("--autoassign-config", default=BASE_CONFIGS["AutoAssign"])
    return parser.parse_args(argv)


def _default(value: Optional[int], on_cuda: int, on_cpu: int, cuda: bool) -> int:
    return value if value is not None else (on_cuda if cuda else on_cpu)


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """Validated settings; counts left unset get the defaults of the device (CUDA / CPU)."""
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; choose from {list(MODEL_NAMES)}")
    if args.fpn_channels % 32:
        raise ValueError(f"--fpn-channels must be a multiple of 32 (GroupNorm), got "
                         f"{args.fpn_channels}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available")
    if args.no_sweep and args.sweep_only:
        raise ValueError("--no-sweep and --sweep-only leave nothing to measure")
    cuda = args.device.startswith("cuda")
    counts = {
        "batch_size": _default(args.batch_size, 2, 1, cuda),
        # CPU: one warm-up round (first calls were up to 2x slower) and 5 timed rounds: about
        # 5 minutes on 2 idle cores.
        "warmup": _default(args.warmup, 2, 1, cuda),
        "iters": _default(args.iters, 10, 5, cuda),
        "assign_iters": _default(args.assign_iters, 20, 5, cuda),
        "sweep_iters": _default(args.sweep_iters, 10, 1, cuda),
        # CPU: the main run has warmed up the same code paths; only the shapes differ.
        "sweep_warmup": _default(args.sweep_warmup, 2, 0, cuda),
        "sweep_batch_size": _default(args.sweep_batch_size, 1, 1, cuda),
    }
    positive = dict(counts, boxes=args.boxes, num_classes=args.num_classes)
    for name in ("batch_size", "iters", "assign_iters", "sweep_iters", "sweep_batch_size",
                 "boxes", "num_classes"):
        if positive[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {positive[name]}")
    for name in ("warmup", "sweep_warmup"):
        if counts[name] < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {counts[name]}")
    return BenchSettings(
        device=args.device,
        models=models,
        depth=args.depth,
        fpn_channels=args.fpn_channels,
        num_convs=args.num_convs,
        top_block_in_feature=args.top_block_in_feature,
        num_classes=args.num_classes,
        image_size=tuple(args.image_size),
        boxes=args.boxes,
        score_thresh=args.score_thresh,
        main_run=not args.sweep_only,
        sweep=not args.no_sweep,
        sweep_boxes=tuple(args.sweep_boxes),
        sweep_short_sides=tuple(args.sweep_short_sides),
        seed=args.seed,
        threads=args.threads,
        configs={"PseudoIoU": args.pseudo_iou_config, "AutoAssign": args.autoassign_config},
        output=args.output,
        plot=args.plot,
        **counts,
    )


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
    from anchor_free.engine import get_project_cfg, setup_cfg

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
    return short, int(round(short * ASPECT))


# ------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if match is None:
        raise OSError(f"{key} not in /proc/self/status")
    return int(match.group(1))


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_peak_rss_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _proc_status_kib("VmHWM")
        return True
    except OSError:
        return False


class PeakMemory:
    """
    ``with PeakMemory(device) as m: ...`` -> ``m.peak_mib``: the peak memory above what was in
    use on entry (None where it cannot be measured). ``PeakMemory.method(device)`` names how.
    """

    _cpu_supported: Optional[bool] = None

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib: Optional[float] = None

    @classmethod
    def method(cls, device: torch.device) -> str:
        if device.type == "cuda":
            return "cuda: torch.cuda.max_memory_allocated minus memory_allocated before the call"
        if cls._cpu_supported is None:
            cls._cpu_supported = cpu_peak_rss_supported()
        if cls._cpu_supported:
            return ("cpu: peak RSS (VmHWM after the call, reset via /proc/self/clear_refs) minus "
                    "VmRSS before it, after gc + malloc_trim")
        return "unavailable (no /proc/self/clear_refs)"

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.method(self.device).startswith("cpu"):
            _malloc_trim()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._base = _proc_status_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / MIB
        elif self.method(self.device).startswith("cpu"):
            self.peak_mib = (_proc_status_kib("VmHWM") - self._base) / 1024.0


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
    model.train()
    model.zero_grad(set_to_none=True)
    with EventStorage():
        losses = model(batched_inputs)
        sum(losses.values()).backward()


@torch.no_grad()
def inference(model: nn.Module, batched_inputs) -> None:
    model.eval()
    model(batched_inputs)


def assign_loss(model: nn.Module, inputs, device: torch.device) -> Tuple[float, float]:
    """forward_training + backward on precomputed head outputs; returns (fwd s, fwd+bwd s)."""
    images, features, predictions, gt_instances = inputs
    for t in _flat(predictions):
        t.grad = None
    with EventStorage():
        _sync(device)
        start = time.perf_counter()
        losses = model.forward_training(images, features, predictions, gt_instances)
        _sync(device)
        mid = time.perf_counter()
        sum(losses.values()).backward()
        _sync(device)
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
    _sync(device)
    start = time.perf_counter()
    model.forward_inference(images, features, predictions)
    _sync(device)
    return time.perf_counter() - start


def _summary(samples_s: List[float]) -> Dict[str, Any]:
    ms = [1000.0 * v for v in samples_s]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
            "samples_ms": ms}


def _median_or_none(values: List[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)) or "out of memory" in str(e)


@dataclass
class Sample:
    """One timed call: seconds (a tuple for assign_loss's (fwd, fwd+bwd)) and peak MiB."""

    seconds: Any
    peak_mib: Optional[float]


def interleaved(
    names: List[str],
    run: Callable[[str], Any],
    warmup: int,
    iters: int,
    device: torch.device,
    errors: Dict[str, str],
) -> Dict[str, List[Sample]]:
    """
    Call ``run(name)`` round-robin over ``names`` (A B C D A B C D ...): ``warmup`` untimed
    rounds, then ``iters`` timed ones. A call is timed from a device sync to a device sync
    unless ``run`` returns its own timing; the :class:`PeakMemory` set-up (gc, trim, counter
    reset) happens before the clock starts. A model that raises is dropped (error in ``errors``).
    """
    samples: Dict[str, List[Sample]] = {n: [] for n in names}
    for round_idx in range(warmup + iters):
        for name in names:
            if name in errors:
                continue
            try:
                with PeakMemory(device) as mem:
                    _sync(device)
                    start = time.perf_counter()
                    value = run(name)
                    _sync(device)
                    elapsed = time.perf_counter() - start
            except Exception as e:
                if not _is_oom(e):
                    logger.exception(f"{name} failed")
                errors[name] = _error(e)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if round_idx >= warmup:
                samples[name].append(Sample(elapsed if value is None else value, mem.peak_mib))
    return {n: v for n, v in samples.items() if n not in errors}


# ------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------
def measure_main(models: Dict[str, nn.Module], s: BenchSettings) -> Dict[str, Any]:
    device = torch.device(s.device)
    names = list(models)
    h, w = s.image_size
    batch = make_batch(s.batch_size, h, w, s.boxes, s.num_classes, s.seed)
    errors: Dict[str, str] = {}
    results: Dict[str, Dict[str, Any]] = {n: {"peak_mib": {}} for n in names}

    def record(key: str, samples: Dict[str, List[Sample]], part: Optional[int] = None) -> None:
        for name, v in samples.items():
            seconds = [x.seconds if part is None else x.seconds[part] for x in v]
            results[name][key] = _summary(seconds)
            results[name]["peak_mib"][key] = _median_or_none([x.peak_mib for x in v])

    logger.info(f"train step: {s.warmup} warm-up + {s.iters} timed rounds")
    record("train", interleaved(
        names, lambda n: train_step(models[n], batch), s.warmup, s.iters, device, errors))
    logger.info("inference")
    record("inference", interleaved(
        names, lambda n: inference(models[n], batch), s.warmup, s.iters, device, errors))

    logger.info(f"assignment + loss: {s.warmup} warm-up + {s.assign_iters} timed rounds")
    prepared = {}
    for name in names:
        if name not in errors:
            prepared[name] = head_outputs(models[name], batch)
    samples = interleaved(
        list(prepared), lambda n: assign_loss(models[n], prepared[n], device),
        s.warmup, s.assign_iters, device, errors,
    )
    record("assign_loss_fwd", samples, part=0)
    record("assign_loss", samples, part=1)
    for name in results:
        results[name]["peak_mib"].pop("assign_loss_fwd", None)  # measured with the backward
    logger.info(f"post-processing: {s.warmup} warm-up + {s.assign_iters} timed rounds")
    record("postprocess", interleaved(
        list(prepared), lambda n: postprocess(models[n], prepared[n], device),
        s.warmup, s.assign_iters, device, errors))
    prepared.clear()  # free the head outputs
    for name, err in errors.items():
        results[name] = {"error": err}
    return results


def _same_backbones(models: Dict[str, nn.Module]) -> bool:
    states = [m.backbone.state_dict() for m in models.values()]
    return all(
        s.keys() == states[0].keys() and all(torch.equal(s[k], states[0][k]) for k in s)
        for s in states[1:]
    )


def measure_sweep(models: Dict[str, nn.Module], s: BenchSettings) -> List[Dict[str, Any]]:
    """Assignment + loss (fwd+bwd) time and peak memory per model at each sweep point."""
    device = torch.device(s.device)
    names = list(models)
    # Identical backbones (same seed) give identical features: run the backbone once per size.
    shared_backbone = _same_backbones(models)
    points: List[Tuple[str, Tuple[int, int], int]] = []
    for boxes in s.sweep_boxes:
        points.append(("boxes", s.image_size, boxes))
    for short in s.sweep_short_sides:
        points.append(("size", short_side_size(short), s.boxes))
    rows: List[Dict[str, Any]] = []
    cached_size, cached, head_errors = None, {}, {}
    for kind, (h, w), boxes in points:
        logger.info(f"sweep: {h}x{w}, {boxes} boxes per image")
        batch = make_batch(s.sweep_batch_size, h, w, boxes, s.num_classes, s.seed + boxes)
        if cached_size != (h, w):  # head outputs depend on the image size only
            cached, head_errors = {}, {}
            gc.collect()
            feats = backbone_features(models[names[0]], batch) if shared_backbone else None
            for name in names:
                try:
                    cached[name] = head_outputs(models[name], batch, feats)
                except Exception as e:
                    head_errors[name] = _error(e)
            del feats
            cached_size = (h, w)
        errors = dict(head_errors)
        prepared = {}
        for name, (images, features, predictions, _) in cached.items():
            gt = [x["instances"].to(models[name].device) for x in batch]
            prepared[name] = (images, features, predictions, gt)
        samples = interleaved(
            list(prepared), lambda n: assign_loss(models[n], prepared[n], device)[1],
            s.sweep_warmup, s.sweep_iters, device, errors,
        )
        row: Dict[str, Any] = {"kind": kind, "image_size": [h, w], "boxes_per_image": boxes,
                               "batch_size": s.sweep_batch_size, "models": {}}
        for name in names:
            if name in samples:
                entry = _summary([x.seconds for x in samples[name]])
                entry["peak_mib"] = _median_or_none([x.peak_mib for x in samples[name]])
                row["models"][name] = entry
            else:
                row["models"][name] = {"error": errors.get(name, "not run")}
        rows.append(row)
        prepared.clear()
    return rows


def add_ratios(results: Dict[str, Dict[str, Any]]) -> None:
    """``ratio_to_fcos`` per measurement, and assign+loss as a share of the train step."""
    ref = results.get(REFERENCE_MODEL, {})
    for name, res in results.items():
        if "error" in res:
            continue
        ratios = {}
        for key in TIMED_KEYS:
            if key in res and key in ref:
                ratios[key] = res[key]["median_ms"] / ref[key]["median_ms"]
        for key, value in (res.get("peak_mib") or {}).items():
            ref_value = (ref.get("peak_mib") or {}).get(key)
            if value is not None and ref_value:
                ratios[f"peak_mib_{key}"] = value / ref_value
        res["ratio_to_fcos"] = ratios
        # Interleaved rounds: round i of a model ran right after round i of the others, so the
        # per-round ratios show how far load drifts move a ratio.
        res["round_ratios_to_fcos"] = {
            key: [a / b for a, b in zip(res[key]["samples_ms"], ref[key]["samples_ms"])]
            for key in TIMED_KEYS
            if key in res and key in ref
            and len(res[key]["samples_ms"]) == len(ref[key]["samples_ms"]) > 1
        }
        if "train" in res and "assign_loss" in res:
            res["assign_loss_share_of_train"] = (
                res["assign_loss"]["median_ms"] / res["train"]["median_ms"]
            )


def check_targets(
    results: Dict[str, Dict[str, Any]], sweep: List[Dict[str, Any]], s: BenchSettings
) -> List[Dict[str, Any]]:
    """The targets of issue 5, each {"target", "value", "holds"} (holds None: not measured)."""
    checks: List[Dict[str, Any]] = []

    def ratio(model: str, key: str) -> Optional[float]:
        return results.get(model, {}).get("ratio_to_fcos", {}).get(key)

    for model, key, limit, what in (
        ("PseudoIoU", "train", 1.00, "train step"),
        ("AutoAssign", "train", 1.05, "train step"),
        ("PseudoIoU", "inference", 1.00, "inference"),
        ("AutoAssign", "inference", 1.00, "inference"),
    ):
        value = ratio(model, key)
        rounds = results.get(model, {}).get("round_ratios_to_fcos", {}).get(key, [])
        text = None if value is None else f"{value:.3f}x"
        if value is not None and rounds:
            text += f" (rounds {min(rounds):.2f}-{max(rounds):.2f}x)"
        check = {"target": f"{model} {what} <= {limit:.2f}x FCOS", "value": text,
                 "holds": None if value is None else value <= limit}
        if check["holds"] is False and rounds and min(rounds) <= limit:
            check["resolved"] = False  # the median misses, but some rounds met the target
        checks.append(check)
    at_100 = [r for r in sweep if r["kind"] == "boxes" and r["boxes_per_image"] == 100]
    for model in ("PseudoIoU", "AutoAssign"):
        train = results.get(model, {}).get("train")
        entry = at_100[0]["models"].get(model, {}) if at_100 else {}
        if train is None or "median_ms" not in entry:
            share = None
        else:  # per image: the sweep and the main run may use different batch sizes
            share = (entry["median_ms"] / s.sweep_batch_size) / (
                train["median_ms"] / s.batch_size)
        checks.append({"target": f"{model} assignment + loss at 100 GT < 5% of the train step",
                       "value": None if share is None else f"{100 * share:.2f}%",
                       "holds": None if share is None else share < 0.05})
    at_1000 = [r for r in sweep if r["kind"] == "boxes" and r["boxes_per_image"] == 1000]
    for model in ("PseudoIoU", "AutoAssign"):
        entry = at_1000[0]["models"].get(model) if at_1000 else None
        if entry is None:
            value, holds = None, None
        elif "median_ms" in entry and "error" not in entry:
            mem = entry.get("peak_mib")
            value = "ran" + ("" if mem is None else f", peak {mem:.0f} MiB")
            holds = True
        else:
            value, holds = entry.get("error", "failed"), False
        h, w = s.image_size
        checks.append({"target": f"{model} 1000 GT boxes per {h}x{w} image without OOM",
                       "value": value, "holds": holds})
    return checks


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------
def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(res: Dict[str, Any], key: str) -> str:
    value = res.get("ratio_to_fcos", {}).get(key)
    return "" if value is None else f" ({value:.2f}x)"


def main_table(results: Dict[str, Dict[str, Any]]) -> str:
    header = ("| model | train step ms | inference ms | post-process ms | assign+loss ms fwd | "
              "assign+loss ms fwd+bwd | share of train step | peak MiB train | "
              "peak MiB inference | peak MiB assign+loss |")
    lines = [header, "|" + "---|" * 10]
    for name, res in results.items():
        if "error" in res:
            lines.append(f"| {name} | {res['error']} |" + " |" * 8)
            continue
        mem = res.get("peak_mib") or {}

        def t(key):
            return _fmt(res.get(key, {}).get("median_ms")) + _ratio(res, key)

        def m(key):
            return _fmt(mem.get(key), 0) + _ratio(res, f"peak_mib_{key}")

        share = res.get("assign_loss_share_of_train")
        lines.append(
            f"| {name} | {t('train')} | {t('inference')} | {t('postprocess')} | "
            f"{t('assign_loss_fwd')} | "
            f"{t('assign_loss')} | {_fmt(None if share is None else 100 * share)}% | "
            f"{m('train')} | {m('inference')} | {m('assign_loss')} |"
        )
    return "\n".join(lines)


def sweep_table(sweep: List[Dict[str, Any]], names: List[str]) -> str:
    header = "| image | GT/image | " + " | ".join(f"{n} ms / MiB" for n in names) + " |"
    lines = [header, "|" + "---|" * (2 + len(names))]
    for row in sweep:
        h, w = row["image_size"]
        cells = []
        for name in names:
            entry = row["models"].get(name, {})
            if "median_ms" in entry:
                cell = f"{entry['median_ms']:.1f} / {_fmt(entry.get('peak_mib'), 0)}"
                if "error" in entry:
                    cell += f" ({entry['error']})"
            else:
                cell = entry.get("error", "-")
            cells.append(cell)
        lines.append(f"| {h}x{w} | {row['boxes_per_image']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(checks: List[Dict[str, Any]]) -> str:
    lines = ["| target | measured | holds |", "|---|---|---|"]
    for c in checks:
        holds = {True: "yes", False: "NO", None: "not measured"}[c["holds"]]
        if c.get("resolved") is False:
            holds = "not resolved: the median misses, some interleaved rounds meet it"
        lines.append(f"| {c['target']} | {c['value'] or '-'} | {holds} |")
    return "\n".join(lines)


def plot_sweep(sweep: List[Dict[str, Any]], names: List[str], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, kind in enumerate(("boxes", "size")):
        rows = [r for r in sweep if r["kind"] == kind]
        if not rows:
            continue
        for name in names:
            xs, ts, ms = [], [], []
            for r in rows:
                entry = r["models"].get(name, {})
                if "median_ms" not in entry:
                    continue
                xs.append(r["boxes_per_image"] if kind == "boxes" else min(r["image_size"]))
                ts.append(entry["median_ms"])
                ms.append(entry.get("peak_mib") or float("nan"))
            if xs:
                axes[0][col].plot(xs, ts, marker="o", label=name)
                axes[1][col].plot(xs, ms, marker="o", label=name)
        h, w = rows[0]["image_size"]
        xlabel = (f"GT boxes per image ({h}x{w})" if kind == "boxes"
                  else f"image short side ({rows[0]['boxes_per_image']} GT boxes per image)")
        for row_idx, ylabel in enumerate(("assign + loss fwd+bwd (ms)", "peak memory (MiB)")):
            ax = axes[row_idx][col]
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            if kind == "boxes":
                ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def machine_info(device: torch.device) -> Dict[str, Any]:
    import detectron2

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
            cpu = match.group(1) if match else cpu
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "device": str(device),
    }
    with contextlib.suppress(OSError):
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / (1 << 20), 1)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(
            torch.cuda.get_device_properties(device).total_memory / (1 << 30), 1)
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
            text=True, check=True).stdout.strip()
    return info


def _loadavg() -> Optional[str]:
    with contextlib.suppress(OSError):
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    return None


def run_benchmark(s: BenchSettings, argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Build, measure, write JSON / markdown / plot; returns the JSON document."""
    if s.threads:
        torch.set_num_threads(s.threads)
    device = torch.device(s.device)
    started = time.time()
    report: Dict[str, Any] = {
        "command": " ".join(["benchmarks/benchmark.py"] + list(argv if argv is not None
                                                              else sys.argv[1:])),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": asdict(s),
        "machine": machine_info(device),
        "loadavg_start": _loadavg(),
        "memory_method": PeakMemory.method(device),
        "fcos_head": "FCOSHead(norm='') + GroupNorm(32, C) inserted after each tower conv "
                     "(v0.6 GN workaround; same layout as FCOSHead(norm='GN') on main)",
    }
    models, build_errors = build_models(s)
    report["build_errors"] = build_errors
    results = measure_main(models, s) if s.main_run else {n: {} for n in models}
    for name, err in build_errors.items():
        results[name] = {"error": err}
    results = {n: results[n] for n in s.models if n in results}
    add_ratios(results)
    report["results"] = results
    sweep = measure_sweep(models, s) if s.sweep and models else []
    report["sweep"] = sweep
    report["targets"] = check_targets(results, sweep, s)
    report["loadavg_end"] = _loadavg()
    report["wall_s"] = round(time.time() - started, 1)

    m = report["machine"]
    where = m.get("gpu") or (f"{m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} "
                             f"thread{'s' if m['torch_threads'] > 1 else ''}")
    h, w = s.image_size
    heading = (f"R-{s.depth}-FPN, {s.batch_size} x {h}x{w}, {s.boxes} GT boxes/image, "
               f"float32, {device.type} ({where}); median of {s.iters} "
               f"(interleaved, {s.warmup} warm-up); load avg {report['loadavg_start']} -> "
               f"{report['loadavg_end']}")
    text = [f"## Benchmark: {heading}", "", main_table(results), "",
            f"Peak memory: {report['memory_method']}.", ""]
    if sweep:
        text += [f"### Assignment + loss scaling (fwd+bwd, {s.sweep_batch_size} image(s), "
                 f"median of {s.sweep_iters})", "", sweep_table(sweep, list(models)), ""]
    text += ["### Targets (issue 5)", "", targets_table(report["targets"]), "",
             f"Command: `{report['command']}` ({report['wall_s']} s)"]
    report["markdown"] = "\n".join(text)
    print(report["markdown"])

    os.makedirs(s.output, exist_ok=True)
    stem = os.path.join(s.output, f"benchmark_{device.type}")
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(report["markdown"] + "\n")
    plot = s.plot if s.plot is not None else os.path.join(
        REPO_ROOT, "docs", f"benchmark_scaling_{device.type}.png")
    if sweep and plot:
        plot_sweep(sweep, list(models), plot,
                   f"Assignment + loss, fwd+bwd, {s.sweep_batch_size} image, median of "
                   f"{s.sweep_iters}: {where}")
        report["plot"] = plot
        with open(stem + ".json", "w") as f:
            json.dump(report, f, indent=1)
    logger.info(f"wrote {stem}.json, {stem}.md" + (f", {plot}" if sweep and plot else ""))
    return report


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s",
                        datefmt="%H:%M:%S")
    args = parse_args(argv)
    return run_benchmark(settings_from_args(args), argv)


if __name__ == "__main__":
    main()
