"""train_net.py and demo.py end to end, in subprocesses, on a tiny version of the demo dataset."""
import glob
import json
import os
import subprocess
import sys

import cv2
import pytest
from common import REPO_ROOT, opts, run

DEMO_CONFIGS = sorted(
    p
    for ext in ("yaml", "py")
    for p in glob.glob(os.path.join(REPO_ROOT, "configs", "**", f"*_demo.{ext}"), recursive=True)
    if not os.path.basename(p).startswith("af_baseline")  # same meta-arch as pseudo_iou_*
)


def test_help_lists_detectron2_flags():
    out = run(["train_net.py", "--help"])
    for flag in ("--config-file", "--resume", "--eval-only", "--num-gpus", "--num-machines",
                 "--machine-rank", "--dist-url"):  # fmt: skip
        assert flag in out


@pytest.mark.parametrize("config", DEMO_CONFIGS, ids=os.path.basename)
def test_two_iterations_then_eval_only_then_demo(config, tmp_path):
    """Both front ends (yacs and Python configs): train, --eval-only, demo.py. Inference keeps
    every (point, class) whose score is above the model's threshold; at 0 every score (a
    product of sigmoids, > 0) passes, so a model trained for 2 iterations has detections by
    construction, whatever its random initialisation gave (at 0.05 it may have none)."""
    out_dir = str(tmp_path / "train")
    log = run(["train_net.py", "--config-file", config]
              + opts(config, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", out_dir))  # fmt: skip
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log  # evaluated at the end of training
    weights = os.path.join(out_dir, "model_final.pth")
    assert os.path.isfile(weights)
    with open(os.path.join(out_dir, "metrics.json")) as f:
        iterations = [json.loads(line).get("iteration") for line in f]
    assert 1 in iterations

    eval_dir = str(tmp_path / "eval")
    log = run(["train_net.py", "--config-file", config, "--eval-only"]
              + opts(config, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", eval_dir,
                     "SCORE_THRESH_TEST", "0.0"))  # fmt: skip
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    with open(os.path.join(eval_dir, "inference", "coco_instances_results.json")) as f:
        results = json.load(f)
    assert len({r["image_id"] for r in results}) == 4  # detections on each of the 4 val images

    # demo.py on two images of the dataset (a file and a folder)
    image_dir = glob.glob(os.path.join(os.environ["DETECTRON2_DATASETS"], "demo_shapes",
                                       "*size64_train16_val4*", "images", "val"))[0]  # fmt: skip
    first = sorted(os.listdir(image_dir))[0]
    vis_dir = str(tmp_path / "vis")
    run(["demo.py", "--config-file", config, "--input", os.path.join(image_dir, first), image_dir,
         "--output", vis_dir, "--confidence-threshold", "0.0", "--opts"]
        + opts(config, "MODEL.WEIGHTS", weights, "SCORE_THRESH_TEST", "0.0"))  # fmt: skip
    written = sorted(os.listdir(vis_dir))
    assert written == sorted(os.listdir(image_dir))  # one PNG per input image (PNG inputs)
    drawn = cv2.imread(os.path.join(vis_dir, first))
    original = cv2.imread(os.path.join(image_dir, first))
    assert drawn.shape == original.shape
    assert (drawn != original).any()  # detections were drawn on it (thresholds 0)


def test_demo_needs_weights_and_existing_inputs(tmp_path):
    config = DEMO_CONFIGS[0]
    proc = subprocess.run(
        [sys.executable, "demo.py", "--config-file", config, "--input", "missing.jpg",
         "--output", str(tmp_path), "--opts"] + opts(config, "MODEL.WEIGHTS", "x.pth"),
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.returncode != 0 and "Input not found: missing.jpg" in proc.stdout
