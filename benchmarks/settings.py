"""What defines a benchmark run: :class:`BenchSettings` (written to the JSON) and the defaults."""
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

__all__ = [
    "ASPECT",
    "BASE_CONFIGS",
    "BenchSettings",
    "HEAD_IN_FEATURES",
    "MODEL_NAMES",
    "REFERENCE_MODEL",
    "REPO_ROOT",
    "SWEEP_BOXES",
    "SWEEP_SHORT_SIDES",
    "SYNC_BOXES",
    "SYNC_IMAGES",
    "TIMED_KEYS",
]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_NAMES = ("PseudoIoU", "AutoAssign", "RetinaNet", "FCOS")
REFERENCE_MODEL = "FCOS"
HEAD_IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
BASE_CONFIGS = {
    "PseudoIoU": "configs/Base-PseudoIoU.yaml",
    "AutoAssign": "configs/Base-AutoAssign.yaml",
}
# Timed measurements of the main run, in table order.
TIMED_KEYS = ("train", "inference", "postprocess", "assign_loss_fwd", "assign_loss")
SWEEP_BOXES = (1, 10, 100, 300, 1000)
SWEEP_SHORT_SIDES = (512, 800, 1333)
ASPECT = 1333 / 800  # long / short side of the default image
# Synchronisation count: images per batch (at ``boxes`` boxes each) and boxes per image (at 2
# images per batch).
SYNC_IMAGES = (1, 2, 4)
SYNC_BOXES = (5, 20, 100)


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
    syncs: bool = False  # count synchronisations instead of timing
    sync_images: Tuple[int, ...] = SYNC_IMAGES
    sync_boxes: Tuple[int, ...] = SYNC_BOXES
    seed: int = 0
    threads: Optional[int] = None
    configs: Dict[str, str] = field(default_factory=lambda: dict(BASE_CONFIGS))
    output: str = os.path.join(REPO_ROOT, "benchmarks", "results")
    plot: Optional[str] = None  # default: docs/benchmark_scaling_<device>.png
