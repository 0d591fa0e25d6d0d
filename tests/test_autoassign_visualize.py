"""The assignment pictures (paper Figures 3 and 4): one command writes a PNG per object and the
per-class center prior, and the maps it draws hold the model's weights."""
import json
import os

import cv2
import numpy as np
import torch
from common import AA_DEMO, TINY_DATA

from anchor_free_app.visualize import autoassign as visualize


def test_visualize_writes_pngs_with_the_model_weights(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "vis"
    opts = TINY_DATA + ["MODEL.DEVICE", "cpu"]
    written = visualize.main(["--config-file", AA_DEMO, "--dataset", "demo_shapes_val",
                              "--index", "1", "--max-objects", "3", "--output", str(out)] + opts)
    objects = [p for p in written if "_object" in p]
    assert 1 <= len(objects) <= 3
    assert written[-1].endswith("center_prior_per_class.png")
    for path in written:
        image = cv2.imread(path)
        assert image is not None and image.shape[0] > 100 and image.std() > 10
    with open(out / "center_prior_per_class.json") as f:
        values = json.load(f)
    assert values["classes"] == ["rectangle", "ellipse", "triangle", "cross"]
    assert np.allclose(values["mu"], 0.0) and np.allclose(values["sigma"], 1.0)
    assert sorted(os.listdir(out)) == sorted(
        [os.path.basename(p) for p in written] + ["center_prior_per_class.json"])


def test_assignment_maps_scatter_the_pair_weights():
    from anchor_free_app.config import setup_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances

    torch.manual_seed(0)
    model = build_model(setup_cfg(AA_DEMO, TINY_DATA + ["MODEL.DEVICE", "cpu"], freeze=False))
    instances = Instances((64, 64))
    instances.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 30.0], [9.0, 9.0, 10.0, 10.0]]))
    instances.gt_classes = torch.tensor([1, 3])
    inputs = {"image": torch.rand(3, 64, 64) * 255, "instances": instances}
    maps = visualize.assignment_maps(model, inputs)
    assert maps["image"].shape == (64, 64, 3) and maps["image"].dtype == np.uint8
    assert [m.shape for m in maps["prior"][0]] == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    # Object 0: positive weights over all levels sum to 1; the prior at P3 location (24, 16)
    # (box centre (22, 18), d = (0.25, -0.25) strides) is exp(-0.0625).
    assert np.isclose(sum(m.sum() for m in maps["pos_weight"][0]), 1.0, atol=1e-5)
    assert np.isclose(maps["prior"][0][0][2, 3], np.exp(-0.0625), rtol=1e-5)
    assert (maps["prior"][0][0][0, :] == 0).all()  # y = 0 is outside the box
    assert maps["confidence"][0][0][2, 3] >= 1.0  # exp(P / tau) >= 1
    # Object 1 has no location inside its box: all maps are zero.
    assert all((m == 0).all() for name in ("prior", "confidence", "pos_weight")
               for m in maps[name][1])
