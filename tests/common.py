"""Shared by the tests: a tiny version of the demo dataset and a subprocess runner."""
import os
import subprocess
import sys
from typing import Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIOU_DEMO = os.path.join(REPO_ROOT, "configs", "PseudoIoU", "pseudo_iou_R_18_FPN_demo.yaml")
AA_DEMO = os.path.join(REPO_ROOT, "configs", "AutoAssign", "autoassign_R_18_FPN_demo.yaml")
# 16 train / 4 val images of 64 x 64: enough to run the whole pipeline in seconds. On the CPU,
# asked for explicitly (Detectron2's default MODEL.DEVICE is cuda; no silent CPU fallback).
TINY_DATA = [
    "DATASETS.DEMO_SHAPES.NUM_TRAIN", "16", "DATASETS.DEMO_SHAPES.NUM_VAL", "4",
    "DATASETS.DEMO_SHAPES.IMAGE_SIZE", "64", "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu",
]  # fmt: skip


# The same in a Python config's words (path.key=value), and how each system names a setting.
TINY_DATA_PYTHON = [
    "dataloader.demo_shapes.num_train=16", "dataloader.demo_shapes.num_val=4",
    "dataloader.demo_shapes.image_size=64",
    "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
    "dataloader.train.mapper.augmentations.0.max_size=64",
    "dataloader.test.mapper.augmentations.0.short_edge_length=64",
    "dataloader.test.mapper.augmentations.0.max_size=64",
    "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0", "train.device=cpu",
]  # fmt: skip
PYTHON_KEYS = {
    "SOLVER.MAX_ITER": "train.max_iter", "OUTPUT_DIR": "train.output_dir",
    "MODEL.WEIGHTS": "train.init_checkpoint", "MODEL.DEVICE": "train.device",
    "SCORE_THRESH_TEST": "model.test_score_thresh", "SOLVER.CHECKPOINT_PERIOD":
    "train.checkpointer.period", "DATASETS.TEST": "dataloader.evaluator",
}
PIOU_DEMO_PYTHON = os.path.join(REPO_ROOT, "configs", "PseudoIoU", "pseudo_iou_R_18_FPN_demo.py")


def opts(config: str, *pairs: str) -> list:
    """``KEY VALUE`` pairs (yacs names) as the config's system takes them, with the tiny data:
    yacs ``KEY VALUE ...``, Python ``path.key=value ...`` (``SCORE_THRESH_TEST``: the model's)."""
    if not config.endswith(".py"):
        keys = list(pairs[0::2])
        values = list(pairs[1::2])
        out = []
        for key, value in zip(keys, values):
            if key == "SCORE_THRESH_TEST":
                for node in ("PSEUDO_IOU", "AUTOASSIGN", "RETINANET"):
                    out += [f"MODEL.{node}.SCORE_THRESH_TEST", value]
            else:
                out += [key, value]
        return out + TINY_DATA
    python_values = {"()": "null"}  # DATASETS.TEST (): no evaluation
    return [
        f"{PYTHON_KEYS[k]}={python_values.get(v, v)}" for k, v in zip(pairs[0::2], pairs[1::2])
    ] + TINY_DATA_PYTHON


def run(args, timeout=600, check=True) -> str:
    """Run ``python ARGS`` in the repository root; return its stdout+stderr."""
    proc = subprocess.run(
        [sys.executable] + list(args),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-5000:]
    return proc.stdout if check else (proc.returncode, proc.stdout)


def gt_instances(boxes, classes: Sequence[int], image_size: Tuple[int, int] = (64, 64)):
    """Instances with gt_boxes (N, 4) XYXY and gt_classes (N,) for an image of image_size (h, w)."""
    import torch
    from detectron2.structures import Boxes, Instances

    inst = Instances(image_size)
    inst.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
    return inst
