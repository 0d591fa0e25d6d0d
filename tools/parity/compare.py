"""This project's side of the parity check (runs in this project's environment): convert the
source checkpoint written by ``mmdet2_pseudo_iou.py`` / ``mmdet3_autoassign.py``, load it with
the strict ``--eval-only`` loader into the model of a config, run it on the same images and
report the differences (every level's outputs, then the detections)::

    python tools/parity/compare.py --dir /tmp/parity/mmdet3_autoassign_full \\
        --config-file configs/AutoAssign/autoassign_R_50_FPN_1x_mmdet.yaml
    python tools/parity/compare.py --dir tests/fixtures/convert/mmdet3_autoassign \\
        --config-file tests/fixtures/convert/mmdet3_autoassign/config.yaml --capped

``--capped``: the detections of ``capped.pth`` (the source's test settings under which levels
have more candidates above the threshold than the source keeps), with its config options.
"""
import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from anchor_free_app.convert import convert_checkpoint  # noqa: E402
from anchor_free_app.convert.parity import compare_outputs, run_model  # noqa: E402


def build_converted_model(source_dir: str, config_file: str, opts=()):
    """Convert ``source_dir/source.pth`` and load it strictly into the config's model."""
    from detectron2.modeling import build_model

    from anchor_free_app.checkpoint import SafeDetectionCheckpointer
    from anchor_free_app.config import setup_cfg

    cfg = setup_cfg(config_file, ["MODEL.DEVICE", "cpu", *opts])
    with tempfile.TemporaryDirectory() as tmp:
        dst = os.path.join(tmp, "converted.pth")
        report = convert_checkpoint(os.path.join(source_dir, "source.pth"), dst, "auto", cfg)
        model = build_model(cfg)
        SafeDetectionCheckpointer(model, strict=True).load(dst)
    return model.eval(), report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="folder with source.pth and outputs.pth")
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--capped", action="store_true", help="compare the detections of capped.pth")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    source = torch.load(os.path.join(args.dir, "outputs.pth"), weights_only=True)
    opts = list(args.opts)
    if args.capped:
        capped = torch.load(os.path.join(args.dir, "capped.pth"), weights_only=True)
        source["detections"] = capped["detections"]
        opts = capped["opts"] + opts
        print(f"capped.pth: source settings {capped['settings']}, options {capped['opts']}")
    model, report = build_converted_model(args.dir, args.config_file, opts)
    ours = run_model(model, source["images"])
    print(f"{report['source']}: {report['converted']} tensors; source: {source.get('framework')}")
    print("| image | size | max abs diff cls logits | box (relative) | quality logits | detections: source / ours / matched | unmatched source: empty / other | max box diff (px) | max score diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for rep in compare_outputs(source, ours, args.tol):
        d = rep["detections"]
        h, w = source["images"][rep["image"]].shape[:2]
        print(
            f"| {rep['image']} | {h}x{w} | {rep['cls']:.2e} | {rep['box']:.2e} | {rep['quality']:.2e} | "
            f"{d['source']} / {d['ours']} / {d['matched']} | {d['source_empty']} / {d['unmatched']} | "
            f"{d['max_box_diff']:.2e} | {d['max_score_diff']:.2e} |"
        )
        worst = max(worst, rep["cls"], rep["box"], rep["quality"])
    print(f"worst per-level difference: {worst:.2e} ({'within' if worst <= args.tol else 'ABOVE'} {args.tol})")


if __name__ == "__main__":
    main()
