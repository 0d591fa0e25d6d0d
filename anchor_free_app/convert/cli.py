"""Command line of the converters (Detectron2's ``tools/convert-*.py`` habit)::

    python tools/convert_checkpoint.py --source mmdet2-pseudo-iou \\
        --config-file configs/PseudoIoU/pseudo_iou_R_50_FPN_1x_mmdet.yaml \\
        piou_r50_1x.pth output/pseudo_iou_R_50_FPN_1x_mmdet.pth

With ``--config-file`` the converted weights are checked against the model of that config
(every parameter filled, nothing left over, same shapes); the output then loads with
``train_net.py --eval-only``.
"""
import argparse
import logging
import sys
from typing import List, Optional

from .api import convert_checkpoint
from .formats import SOURCES
from .mapping import CheckpointLayoutError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert a published Pseudo-IoU / AutoAssign checkpoint to Detectron2.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="sources:\n" + "\n".join(f"  {k}: {v[2]}" for k, v in SOURCES.items()),
    )
    parser.add_argument("input", help="source checkpoint (.pth)")
    parser.add_argument("output", help="Detectron2 checkpoint to write (.pth)")
    parser.add_argument(
        "--source", default="auto", choices=["auto", *SOURCES], help="source layout (default: detect)"
    )
    parser.add_argument(
        "--config-file", default="",
        help="config (yacs .yaml or Python .py) of the target model, to check the result against",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[],
        help="config overrides: KEY VALUE (yacs) or path.key=value (Python configs)",
    )  # fmt: skip
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = None
    if args.config_file:
        from anchor_free_app.config import load_config

        # The check builds the model on the CPU (no GPU needed to convert).
        cfg = load_config(args.config_file, args.opts, freeze=False, check_device=False)
    try:
        report = convert_checkpoint(args.input, args.output, args.source, cfg)
    except CheckpointLayoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(
        f"{args.input} ({report['source']}): {report['converted']} tensors written to "
        f"{report['output']}; {len(report['dropped'])} source entries dropped "
        "(BatchNorm step counters)" + (" ; checked against " + args.config_file if cfg else "")
    )
    for note in report["notes"]:
        print(f"note: {note} (use the source's config to reproduce it)")


if __name__ == "__main__":
    main()
