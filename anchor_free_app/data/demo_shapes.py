"""The built-in demo dataset: generated filled shapes on textured backgrounds, in COCO format.

Each image has 1 to ``max_objects`` shapes of four classes (rectangle, ellipse, triangle, cross)
of random colour, aspect ratio (1:3 to 3:1) and size (log-uniform, from a few pixels to most of
the image), overlapping but never hiding more than half of an earlier shape. Boxes are the tight
boxes of each shape's full (amodal) pixel mask. Generation is deterministic in ``seed``: image i
of a split depends only on (seed, split, i).

Files are written once to ``$DETECTRON2_DATASETS/demo_shapes/<variant>/`` (default
``./datasets``): ``images/{train,val}/*.png`` and ``annotations/{train,val}.json``; the folder
is written under a temporary name and renamed when complete, so an interrupted generation never
leaves a half-written dataset behind. Registered with Detectron2 by ``register_coco_instances``
as ``demo_shapes_train`` and ``demo_shapes_val``.
"""
import json
import logging
import os
import shutil
import tempfile
from typing import Dict, List, Tuple

import cv2
import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

__all__ = [
    "DEMO_SHAPES_CLASSES",
    "generate_demo_shapes",
    "register_demo_shapes",
    "register_demo_shapes_from_cfg",
]

logger = logging.getLogger(__name__)

DEMO_SHAPES_CLASSES = ["rectangle", "ellipse", "triangle", "cross"]
_SPLIT_IDS = {"train": 0, "val": 1}
_MAX_HIDDEN_FRACTION = 0.5  # a new shape may cover at most this much of an earlier one
_PLACEMENT_TRIES = 20


def _textured_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour noise plus stripes and pixel noise, (size, size, 3) uint8."""
    coarse = rng.uniform(0, 255, size=(rng.integers(2, 6), rng.integers(2, 6), 3))
    background = cv2.resize(coarse.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    period = rng.uniform(4, 24)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    background += rng.uniform(5, 30) * stripes[..., None]
    background += rng.normal(0, 8, size=background.shape)
    return np.clip(background, 0, 255).astype(np.uint8)


def _shape_mask(cls: int, x0: int, y0: int, w: int, h: int, size: int) -> np.ndarray:
    """Boolean (size, size) mask of a shape whose tight box is [x0, y0, x0+w, y0+h)."""
    mask = np.zeros((size, size), np.uint8)
    x1, y1 = x0 + w - 1, y0 + h - 1
    if cls == 0:  # rectangle
        mask[y0 : y1 + 1, x0 : x1 + 1] = 1
    elif cls == 1:  # ellipse
        center = ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
        cv2.ellipse(mask, (center, (float(w), float(h)), 0.0), 1, thickness=-1)
    elif cls == 2:  # triangle: base at the bottom, apex on the top edge
        apex_x = x0 + (w - 1) // 2
        pts = np.array([[x0, y1], [x1, y1], [apex_x, y0]], np.int32)
        cv2.fillPoly(mask, [pts], 1)
    else:  # cross: a horizontal and a vertical bar, each a third of the box thick
        tw, th = max(1, w // 3), max(1, h // 3)
        mask[y0 : y1 + 1, x0 + (w - tw) // 2 : x0 + (w - tw) // 2 + tw] = 1
        mask[y0 + (h - th) // 2 : y0 + (h - th) // 2 + th, x0 : x1 + 1] = 1
    return mask.astype(bool)


def _generate_image(
    rng: np.random.Generator, size: int, max_objects: int
) -> Tuple[np.ndarray, List[Dict]]:
    image = _textured_background(rng, size)
    visible = np.zeros((size, size), np.int32)  # index+1 of the object on top, 0 = background
    objects: List[Dict] = []
    min_side, max_side = 6, int(0.8 * size)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(len(DEMO_SHAPES_CLASSES)))
        color = rng.integers(0, 256, size=3)
        for _ in range(_PLACEMENT_TRIES):
            side = float(np.exp(rng.uniform(np.log(min_side), np.log(max_side))))
            ratio = float(np.exp(rng.uniform(np.log(1 / 3), np.log(3))))
            w = int(np.clip(round(side * np.sqrt(ratio)), 4, size))
            h = int(np.clip(round(side / np.sqrt(ratio)), 4, size))
            x0 = int(rng.integers(0, size - w + 1))
            y0 = int(rng.integers(0, size - h + 1))
            mask = _shape_mask(cls, x0, y0, w, h, size)
            covered = np.bincount(visible[mask], minlength=len(objects) + 1)[1:]
            areas = np.array([o["visible_area"] for o in objects], np.int64)
            if len(objects) == 0 or np.all(covered <= _MAX_HIDDEN_FRACTION * areas):
                break
        else:
            continue  # no placement keeps earlier shapes visible enough: skip this shape
        for obj, hidden in zip(objects, covered):
            obj["visible_area"] -= int(hidden)
        visible[mask] = len(objects) + 1
        image[mask] = color
        ys, xs = np.nonzero(mask)
        x_min, y_min, x_max, y_max = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        objects.append(
            {
                "category": cls,
                "bbox": [int(x_min), int(y_min), int(x_max - x_min), int(y_max - y_min)],
                "area": int(mask.sum()),
                "visible_area": int(mask.sum()),
            }
        )
    return image, objects


def _write_split(folder: str, split: str, num_images: int, size: int, seed: int, max_objects: int):
    image_dir = os.path.join(folder, "images", split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
        image, objects = _generate_image(rng, size, max_objects)
        file_name = f"{index:06d}.png"
        cv2.imwrite(os.path.join(image_dir, file_name), image)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        for obj in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj["category"] + 1,
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(DEMO_SHAPES_CLASSES)]
    os.makedirs(os.path.join(folder, "annotations"), exist_ok=True)
    with open(os.path.join(folder, "annotations", f"{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def dataset_root() -> str:
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "demo_shapes")


def generate_demo_shapes(
    num_train: int = 2000,
    num_val: int = 100,
    image_size: int = 128,
    seed: int = 0,
    max_objects: int = 15,
    root: str = None,
) -> str:
    """
    Write the dataset if it is not there yet and return its folder. Idempotent.

    Returns:
        folder with ``images/{train,val}/`` and ``annotations/{train,val}.json``.
    """
    if min(num_train, num_val) < 1 or image_size < 32 or max_objects < 1:
        raise ValueError(
            f"demo_shapes: need num_train, num_val >= 1, image_size >= 32, max_objects >= 1; got "
            f"{num_train}, {num_val}, {image_size}, {max_objects}"
        )
    root = root or dataset_root()
    variant = f"seed{seed}_size{image_size}_train{num_train}_val{num_val}_max{max_objects}"
    folder = os.path.join(root, variant)
    if os.path.isfile(os.path.join(folder, "annotations", "val.json")):
        return folder
    os.makedirs(root, exist_ok=True)
    logger.info(f"Generating the demo_shapes dataset into {folder} ...")
    tmp = tempfile.mkdtemp(prefix=variant + ".tmp-", dir=root)
    try:
        _write_split(tmp, "train", num_train, image_size, seed, max_objects)
        _write_split(tmp, "val", num_val, image_size, seed, max_objects)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first
            if not os.path.isfile(os.path.join(folder, "annotations", "val.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def register_demo_shapes(prefix: str = "demo_shapes", **kwargs) -> List[str]:
    """
    Generate (if needed) and register ``{prefix}_train`` and ``{prefix}_val`` with Detectron2.
    Keyword arguments go to :func:`generate_demo_shapes`. Re-registering replaces earlier
    registrations of the same names.

    Returns:
        the registered dataset names.
    """
    folder = generate_demo_shapes(**kwargs)
    names = []
    for split in ("train", "val"):
        name = f"{prefix}_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(
            name,
            {"thing_classes": list(DEMO_SHAPES_CLASSES)},
            os.path.join(folder, "annotations", f"{split}.json"),
            os.path.join(folder, "images", split),
        )
        names.append(name)
    return names


def register_demo_shapes_from_cfg(cfg) -> List[str]:
    """Register the demo dataset with ``cfg.DATASETS.DEMO_SHAPES`` settings if the config uses it."""
    used = [n for n in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST if n.startswith("demo_shapes_")]
    if not used:
        return []
    c = cfg.DATASETS.DEMO_SHAPES
    return register_demo_shapes(
        num_train=c.NUM_TRAIN, num_val=c.NUM_VAL, image_size=c.IMAGE_SIZE, seed=c.SEED
    )
