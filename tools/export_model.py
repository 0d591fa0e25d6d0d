#!/usr/bin/env python
"""
Export a Pseudo-IoU or AutoAssign model to TorchScript (tracing or scripting) or ONNX (tracing),
as Detectron2's ``tools/deploy/export_model.py`` does for its models, then check the exported
model against the eager one on generated images of other sizes than the traced one:

    python tools/export_model.py --config-file configs/PseudoIoU/pseudo_iou_R_18_FPN_demo.yaml \
        --format onnx --output export/pseudo_iou \
        MODEL.WEIGHTS output/demo_pseudo_iou/model_final.pth MODEL.DEVICE cpu
    python tools/export_model.py --config-file configs/PseudoIoU/pseudo_iou_R_18_FPN_demo.py \
        --format torchscript --output export/pseudo_iou \
        train.init_checkpoint=output/demo_pseudo_iou/model_final.pth

writes ``export/pseudo_iou/model.onnx`` (or ``model.ts``) and ``parity.json``, prints one line per
checked image (detections of each model, unmatched ones, largest box and score differences) and
exits with status 1 if a detection has no counterpart within the tolerances.
"""
import argparse
import json
import logging
import os
import sys
from typing import List, Optional, Sequence, Tuple

import torch

from detectron2.utils.logger import setup_logger

from anchor_free_app.checkpoint import SafeDetectionCheckpointer
from anchor_free_app.config import build_model_from_config, load_config, run_settings, set_device
from anchor_free_app.export import (
    EXPORT_FORMATS,
    EXPORT_METHODS,
    ONNX_BOX_TOL,
    ONNX_MIN_SCORE,
    ONNX_SCORE_TOL,
    ExportError,
    compare_detections,
    detectron2_export_api,
    eager_detections,
    export_model,
    generated_image,
    load_exported,
    sample_input,
)

logger = logging.getLogger("export_model")



def parse_sizes(text: str) -> List[Tuple[int, int]]:
    """``"96x128,75x130"`` -> [(96, 128), (75, 130)] (height x width)."""
    sizes = []
    for item in text.split(","):
        try:
            height, width = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected HEIGHTxWIDTH[,HEIGHTxWIDTH...] (e.g. 96x128,75x130), got {text!r}"
            )
        if height < 1 or width < 1:
            raise argparse.ArgumentTypeError(f"sizes must be positive, got {item!r}")
        sizes.append((height, width))
    return sizes


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="torchscript")
    parser.add_argument("--export-method", choices=EXPORT_METHODS, default="tracing")
    parser.add_argument("--output", required=True, help="output folder (created if needed)")
    parser.add_argument(
        "--sample-image",
        default=None,
        help="image to trace with (resized as at test time); default: a generated image",
    )
    parser.add_argument(
        "--check-sizes",
        type=parse_sizes,
        default=None,
        metavar="HxW[,HxW...]",
        help="image sizes on which to compare exported and eager outputs (default: the sample "
        "image's size transposed, and 1.5 times it)",
    )
    parser.add_argument("--no-check", action="store_true", help="export only")
    # Defaults: ONNX Runtime's measured differences with a margin (anchor_free_app/export.py);
    # TorchScript gives the eager values exactly.
    parser.add_argument(
        "--box-tol", type=float, default=ONNX_BOX_TOL, help="px, max coordinate difference"
    )
    parser.add_argument(
        "--score-tol", type=float, default=ONNX_SCORE_TOL, help="max score difference"
    )
    parser.add_argument(
        "--min-score",
        type=float,
        default=ONNX_MIN_SCORE,
        help="detections scoring at or below it need no counterpart (ONNX Runtime's Sigmoid)",
    )
    parser.add_argument(
        "opts", default=[], nargs=argparse.REMAINDER,
        help="config overrides: KEY VALUE pairs (yacs) or path.key=value (Python configs)",
    )
    return parser


def default_check_sizes(traced: Tuple[int, int]) -> List[Tuple[int, int]]:
    height, width = traced
    return [(width, height), (height * 3 // 2 + 1, width * 3 // 2 + 3)]


def check_parity(
    model, path: str, sizes: Sequence[Tuple[int, int]], box_tol: float, score_tol: float,
    min_score: float,
) -> List[dict]:
    """Eager vs exported detections on one generated image of each size (not resized)."""
    exported = load_exported(path)
    reports = []
    for seed, (height, width) in enumerate(sizes, start=1):
        image = generated_image(height, width, seed=seed)
        image = torch.as_tensor(image.astype("float32").transpose(2, 0, 1).copy())
        parity = compare_detections(
            eager_detections(model, image),
            exported(image),
            min_score=min_score,
            box_tol=box_tol,
            score_tol=score_tol,
        )
        reports.append(parity.as_dict())
        logger.info(
            f"{height}x{width}: {parity.num_reference} eager / {parity.num_other} exported "
            f"detections, unmatched {parity.unmatched_reference} / {parity.unmatched_other}, "
            f"max |box diff| {parity.max_box_diff:.3g} px, max |score diff| "
            f"{parity.max_score_diff:.3g}"
        )
    return reports


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="export_model")
    setup_logger(name="anchor_free_app")
    # Exported and checked on the CPU, whatever MODEL.DEVICE the model was trained on: the
    # traced graph holds no device, and ONNX Runtime runs here on its CPU provider.
    cfg = load_config(args.config_file, args.opts, freeze=False, check_device=False)
    settings = run_settings(cfg)
    if settings.device != "cpu":
        logger.info(f"{settings.device_key} is {settings.device!r}: exporting on the CPU")
    set_device(cfg, "cpu")
    api = detectron2_export_api()
    logger.info(f"Detectron2's export API from {api.source}")

    model = build_model_from_config(cfg)
    if settings.weights:
        SafeDetectionCheckpointer(model, strict=True).load(settings.weights)
    else:
        logger.warning("No weights in the config: exporting randomly initialised weights")
    model.eval()

    image = sample_input(cfg, args.sample_image)  # traced; its size sets the default checks
    if args.export_method == "tracing":
        logger.info(f"Tracing on a {tuple(image.shape[1:])} image")
    try:
        path = export_model(model, image, args.output, args.format, args.export_method)
    except ExportError as e:
        logger.error(str(e))
        return 2
    logger.info(f"Wrote {path}")

    if args.no_check:
        return 0
    sizes = args.check_sizes
    if sizes is None:
        sizes = default_check_sizes(tuple(int(s) for s in image.shape[1:]))
    reports = check_parity(model, path, sizes, args.box_tol, args.score_tol, args.min_score)
    summary = {
        "format": args.format,
        "export_method": args.export_method,
        "traced_size": list(image.shape[1:]) if args.export_method == "tracing" else None,
        "box_tol": args.box_tol,
        "score_tol": args.score_tol,
        "min_score": args.min_score,
        "images": reports,
    }
    with open(os.path.join(args.output, "parity.json"), "w") as f:
        json.dump(summary, f, indent=2)
    failed = [r for r in reports if r["unmatched_reference"] or r["unmatched_other"]]
    if failed:
        logger.error(
            f"The exported model differs from the eager one beyond the tolerances on "
            f"{len(failed)} of {len(reports)} images: see {args.output}/parity.json"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
