"""The built-in generated dataset: deterministic, valid COCO, boxes inside the images."""
import hashlib
import json
import os

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from anchor_free_app.data import DEMO_SHAPES_CLASSES, generate_demo_shapes, register_demo_shapes
from detectron2.data import DatasetCatalog, MetadataCatalog


def _digest(folder):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(dirpath, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return generate_demo_shapes(num_train=24, num_val=6, image_size=96, seed=3, root=str(root))


def test_deterministic(small, tmp_path):
    again = generate_demo_shapes(num_train=24, num_val=6, image_size=96, seed=3, root=str(tmp_path))
    assert _digest(small) == _digest(again)
    other = generate_demo_shapes(num_train=24, num_val=6, image_size=96, seed=4, root=str(tmp_path))
    assert _digest(other) != _digest(small)


def test_valid_coco_with_boxes_inside_images(small):
    for split, n in (("train", 24), ("val", 6)):
        coco = COCO(os.path.join(small, "annotations", f"{split}.json"))
        assert len(coco.getImgIds()) == n
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == DEMO_SHAPES_CLASSES
        counts = []
        for img in coco.loadImgs(coco.getImgIds()):
            image = cv2.imread(os.path.join(small, "images", split, img["file_name"]))
            assert image.shape == (img["height"], img["width"], 3) == (96, 96, 3)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            counts.append(len(anns))
            for a in anns:
                x, y, w, h = a["bbox"]
                assert w >= 4 and h >= 4 and x >= 0 and y >= 0
                assert x + w <= img["width"] and y + h <= img["height"]
                assert 0 < a["area"] <= w * h and a["iscrowd"] == 0
        assert 1 <= min(counts) and max(counts) <= 15


def test_variety_of_sizes_classes_and_overlaps(small):
    with open(os.path.join(small, "annotations", "train.json")) as f:
        anns = json.load(f)["annotations"]
    sides = np.array([np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in anns])
    assert sides.min() < 12 and sides.max() > 48  # small to large objects
    ratios = np.array([a["bbox"][2] / a["bbox"][3] for a in anns])
    assert ratios.min() < 0.6 and ratios.max() > 1.6
    assert {a["category_id"] for a in anns} == {1, 2, 3, 4}
    by_image = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    overlapping = 0
    for boxes in by_image.values():
        b = np.array(boxes, float)
        x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
        iw = np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None])
        ih = np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None])
        inter = (iw > 0) & (ih > 0)
        overlapping += int(inter.sum() - len(b))
    assert overlapping > 0


def test_registered_with_detectron2(tmp_path):
    names = register_demo_shapes(
        prefix="test_shapes", num_train=5, num_val=2, image_size=64, seed=0, root=str(tmp_path)
    )
    assert names == ["test_shapes_train", "test_shapes_val"]
    dicts = DatasetCatalog.get("test_shapes_train")
    assert len(dicts) == 5 and all(os.path.isfile(d["file_name"]) for d in dicts)
    assert all(0 <= a["category_id"] < 4 for d in dicts for a in d["annotations"])
    meta = MetadataCatalog.get("test_shapes_val")
    assert meta.evaluator_type == "coco" and meta.thing_classes == DEMO_SHAPES_CLASSES


def test_bad_sizes_rejected(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        generate_demo_shapes(num_train=1, num_val=1, image_size=8, root=str(tmp_path))
