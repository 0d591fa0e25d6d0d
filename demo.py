#!/usr/bin/env python
"""
Run a trained detector on your images and write each one, with its detections drawn by
Detectron2's Visualizer, as a PNG:

    python demo.py --config-file configs/PseudoIoU/pseudo_iou_R_18_FPN_demo.yaml \
        --input a.jpg more_images/ --output out/ \
        --opts MODEL.WEIGHTS output/demo_pseudo_iou/model_final.pth \
        MODEL.DEVICE $(python -m anchor_free_app.device)
    python demo.py --config-file configs/PseudoIoU/pseudo_iou_R_18_FPN_demo.py \
        --input a.jpg --output out/ --opts \
        train.init_checkpoint=output/demo_pseudo_iou/model_final.pth train.device=cpu

MODEL.DEVICE (train.device) is Detectron2's (default cuda, an error where there is no CUDA): the
last line
picks cuda when torch sees a GPU, else cpu. Inputs, weights and --output may be local paths or
URIs of any storage Detectron2's PathManager has a handler for.
"""
import argparse
import logging
import os
import time
from typing import List, Sequence

import cv2

from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer

from anchor_free_app.checkpoint import write_file
from anchor_free_app.config import load_config, run_settings
from anchor_free_app.predictor import Predictor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument(
        "--input", nargs="+", required=True, help="image files and/or folders of images"
    )
    parser.add_argument("--output", required=True, help="folder for the PNGs (created if needed)")
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.3, help="minimum score to draw"
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER,
        help="config overrides: KEY VALUE pairs (yacs) or path.key=value (Python configs)",
    )
    return parser


def collect_images(inputs: Sequence[str]) -> List[str]:
    """Image files named in ``inputs``, folders expanded (sorted, non-recursive); local paths or
    any URI Detectron2's ``PathManager`` has a handler for."""
    paths: List[str] = []
    for item in inputs:
        if PathManager.isdir(item):
            found = sorted(
                os.path.join(item, f)
                for f in PathManager.ls(item)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {item}")
            paths.extend(found)
        elif PathManager.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"Input not found: {item}")
    return paths


def main(argv=None) -> List[str]:
    args = get_parser().parse_args(argv)
    logger = setup_logger(name="demo")
    cfg = load_config(args.config_file, args.opts)
    settings = run_settings(cfg)
    if not settings.weights:
        example = (
            "MODEL.WEIGHTS output/demo_pseudo_iou/model_final.pth"
            if settings.config_system == "yacs"
            else "train.init_checkpoint=output/demo_pseudo_iou/model_final.pth"
        )
        raise ValueError(f"No weights in the config: pass a trained model, e.g. --opts {example}")
    images = collect_images(args.input)
    predictor = Predictor(cfg)
    test_sets = settings.test_datasets
    metadata = MetadataCatalog.get(test_sets[0] if test_sets else "__unused")
    PathManager.mkdirs(args.output)
    written = []
    for path in images:
        try:
            image = read_image(path, format="BGR")
        except Exception as e:
            raise ValueError(f"Cannot read image {path}: {e}") from e
        start = time.perf_counter()
        instances = predictor(image)["instances"].to("cpu")
        instances = instances[instances.scores >= args.confidence_threshold]
        elapsed = time.perf_counter() - start
        drawn = Visualizer(image[:, :, ::-1], metadata).draw_instance_predictions(instances)
        out_path = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png")
        png = cv2.imencode(".png", drawn.get_image()[:, :, ::-1])[1].tobytes()
        write_file(out_path, lambda f: f.write(png))  # through PathManager where not local
        written.append(out_path)
        logger.info(f"{path}: {len(instances)} detections in {elapsed:.2f}s -> {out_path}")
    return written


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()  # pragma: no cover
