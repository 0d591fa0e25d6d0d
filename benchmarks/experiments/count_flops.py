#!/usr/bin/env python
"""
Deterministic companion of the timings: the FLOPs (convolutions and matrix products, counted by
``torch.utils.flop_counter.FlopCounterMode``) of one train step and one inference of each model,
built exactly as the benchmark builds them (``benchmarks/models.py``). On a shared CPU the
train-step ratios to FCOS move by several percent from run to run; the FLOP ratios show what the
models cost without that noise (the label assignment and losses add no convolution or matmul
FLOPs).

    .venv/bin/python benchmarks/experiments/count_flops.py [--image-size 800 1333]
"""
import argparse
import os
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

# Run from a checkout: the repository root on the path, for ``benchmarks`` and the project.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from benchmarks.models import build_models, inference, make_batch, train_step  # noqa: E402
from benchmarks.settings import BenchSettings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, nargs=2, default=(800, 1333))
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = BenchSettings(depth=args.depth, image_size=tuple(args.image_size))
    models, errors = build_models(settings)
    if errors:
        raise SystemExit(f"could not build: {errors}")
    batch = make_batch(1, *args.image_size, settings.boxes, settings.num_classes, 0)
    rows = {}
    for name, model in models.items():
        counts = []
        for step in (train_step, inference):
            with FlopCounterMode(display=False) as counter:
                step(model, batch)
            counts.append(counter.get_total_flops() / 1e9)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows[name] = (counts[0], counts[1], params)
    ref = rows["FCOS"]
    h, w = args.image_size
    print(f"R-{args.depth}-FPN, 1 image {h}x{w}: GFLOPs (conv + matmul, forward + backward)")
    print("| model | train step GFLOPs | inference GFLOPs | parameters (M) |")
    print("|---|---|---|---|")
    for name, (train, infer, params) in rows.items():
        print(f"| {name} | {train:.1f} ({train / ref[0]:.3f}x) | {infer:.1f} "
              f"({infer / ref[1]:.3f}x) | {params:.2f} |")


if __name__ == "__main__":
    main()
