#!/usr/bin/env python
"""How a config's label assignment treats the objects of a dataset, before the first GPU hour:
positives per object by object size and FPN level, objects left without any positive and why,
points inside several boxes and how the rule resolved them, AutoAssign's in-box locations and the
center prior's effective number of locations. Reads annotations and image sizes only (no pixels,
no model forward) and runs the training's own assignment code on the training resize.

    python tools/assignment_report.py \\
        --config-file configs/PseudoIoU/pseudo_iou_R_18_FPN_demo.yaml \\
        --thresholds 0.3,0.5 --rules af_baseline,centerness,scaled_box --output output/report
    python tools/assignment_report.py \\
        --config-file configs/AutoAssign/autoassign_R_18_FPN_demo.yaml \\
        --prior init,weights MODEL.WEIGHTS output/demo_autoassign/model_final.pth

Prints the markdown report and writes report.md, report.json, summary.csv, levels.csv,
objects_with_zero.csv, per_object_by_size.png and zero_by_size.png to --output (default:
OUTPUT_DIR/assignment_report). Guide: "Assignment report" in projects/PseudoIoU/README.md and
projects/AutoAssign/README.md.
"""
import argparse
import os
import sys
from typing import List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from anchor_free_app.assignment_report import (  # noqa: E402
    PRIOR_CHOICES,
    PSEUDO_IOU_RULES,
    check_unit_interval,
    markdown,
    run_report,
)


def _list(text: str) -> List[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _thresholds(text: str) -> List[float]:
    try:
        values = [float(x) for x in _list(text)]
        return check_unit_interval(values, "thresholds")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace("thresholds: ", "")) from None


def _scales(text: str) -> List[int]:
    try:
        values = [int(x) for x in _list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"short-side lengths in pixels, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"short-side lengths must be >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", help="yacs (.yaml) or Python (.py) config"
    )
    parser.add_argument(
        "--dataset", action="append", default=[], metavar="NAME",
        help="registered Detectron2 dataset (repeatable; default: the config's DATASETS.TRAIN)",
    )  # fmt: skip
    parser.add_argument(
        "--scales", type=_scales, default=[], metavar="S1,S2",
        help="short sides to report (default: the smallest and largest of INPUT.MIN_SIZE_TRAIN)",
    )  # fmt: skip
    parser.add_argument(
        "--thresholds", type=_thresholds, default=[], metavar="T1,T2",
        help="Pseudo-IoU: also report these thresholds T, each in [0, 1]",
    )  # fmt: skip
    parser.add_argument(
        "--rules", type=_list, default=[], metavar="R1,R2",
        help=f"Pseudo-IoU: also report the paper's Table 2 rules {list(PSEUDO_IOU_RULES)} "
        "(centerness and scaled box with the config's CENTERNESS_THRESH / SCALED_BOX_FACTOR)",
    )  # fmt: skip
    parser.add_argument(
        "--prior", type=_list, default=[], metavar="P1,P2",
        help=f"AutoAssign: center priors {list(PRIOR_CHOICES)} (at initialisation, and / or "
        "trained, from MODEL.WEIGHTS; default init)",
    )  # fmt: skip
    parser.add_argument("--output", default=None, metavar="DIR", help="folder for the files")
    parser.add_argument("--examples", type=int, default=10, help="objects listed per rule")
    parser.add_argument(
        "--max-images", type=int, default=0, help="only the first N records (0: all)"
    )
    parser.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1),
        help="threads assigning batches of images at once (default: 2, or 1 on one core)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
        help="config overrides: KEY VALUE pairs (yacs) or path.key=value (Python configs)",
    )  # fmt: skip
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.examples < 0 or args.max_images < 0 or args.workers < 1:
        parser.error("argument --examples / --max-images: must be >= 0, --workers: >= 1")
    try:
        report, paths = run_report(
            args.config_file,
            args.opts,
            datasets=args.dataset,
            scales=args.scales,
            thresholds=args.thresholds,
            rules=args.rules,
            priors=args.prior,
            output_dir=args.output,
            num_examples=args.examples,
            max_images=args.max_images,
            workers=args.workers,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    print(markdown(report))
    print(f"Written ({report['seconds']:.1f} s): " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
