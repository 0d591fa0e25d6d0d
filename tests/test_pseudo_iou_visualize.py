"""The assignment visualiser writes one PNG per FPN level plus an overview, and draws the
assignment the detector trains with."""
import os

import cv2
import numpy as np
from PIL import Image

from anchor_free_app.config import setup_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from anchor_free_app.visualize.pseudo_iou import compute_assignment, load_image_and_instances, main

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "PseudoIoU", "pseudo_iou_R_18_FPN_demo.yaml")
DATASET = "pseudo_iou_visualize_test"


def register(tmp_path):
    image = np.full((64, 64, 3), 128, np.uint8)
    path = str(tmp_path / "image.png")
    cv2.imwrite(path, image)
    record = {
        "file_name": path,
        "height": 64,
        "width": 64,
        "image_id": 0,
        "annotations": [
            {"bbox": [0, 0, 24, 24], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1, "iscrowd": 0}
        ],
    }
    if DATASET not in DatasetCatalog.list():
        DatasetCatalog.register(DATASET, lambda: [record])
        MetadataCatalog.get(DATASET).thing_classes = ["a", "b"]
    return ["DATASETS.TRAIN", f"('{DATASET}',)", "DATASETS.TEST", f"('{DATASET}',)",
            "MODEL.DEVICE", "cpu"]  # fmt: skip


def test_visualize_writes_pngs(tmp_path):
    opts = register(tmp_path)
    out = tmp_path / "vis"
    written = main(
        [
            "--config-file",
            CONFIG,
            "--dataset",
            DATASET,
            "--image-index",
            "0",
            "--output",
            str(out),
            "--min-size",
            "64",
        ]
        + opts
    )
    names = sorted(os.path.basename(p) for p in written)
    expected = [f"{DATASET}_0_{n}.png" for n in ("levels", "p3", "p4", "p5", "p6", "p7")]
    assert names == expected
    for path in written:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def test_visualised_assignment_is_the_detectors(tmp_path):
    """Box [0, 0, 24, 24] on a 64 px image: 9 P3 points inside; at T = 0.4 the centre (1.0) and
    the 4 edge centres (0.5) are positive, the corners (2/7) are not; at T = 0.6 only the centre."""
    opts = register(tmp_path)
    for thresh, num_pos in ((0.4, 5), (0.6, 1)):
        cfg = setup_cfg(CONFIG, opts + ["MODEL.PSEUDO_IOU.PSEUDO_IOU_THRESH", str(thresh)])
        image, instances = load_image_and_instances(cfg, DatasetCatalog.get(DATASET)[0], 64)
        assert image.shape == (64, 64, 3)
        levels = compute_assignment(cfg, image.shape[:2], instances)
        p3 = levels[0]
        assert p3["name"] == "p3" and len(p3["points"]) == 64
        assert int((p3["candidate"] >= 0).sum()) == 9
        assert int((p3["positive"] >= 0).sum()) == num_pos
        assert sorted(round(v, 4) for v in p3["piou"][p3["candidate"] >= 0].tolist()) == (
            [0.2857] * 4 + [0.5] * 4 + [1.0]
        )
        assert all(int((lv["candidate"] >= 0).sum()) == 0 for lv in levels[1:])
