#!/usr/bin/env python
"""
The synchronisation count of one training iteration (``benchmarks/syncs.py``, what
``make bench-syncs`` reports) beside the count a plain aten-level counter gives for the forward
alone (``SyncCounter(naive=True)``: every tensor taken as a device tensor, each
``repeat_interleave`` and boolean-indexed ``index_put`` once, ``F.one_hot``'s CPU-only reads
counted), by source line, for the four models of the benchmark on the same batch. It explains
the difference between the two, line by line (a review's independent hand count used the
second set of rules).

    .venv/bin/python benchmarks/experiments/reconcile_sync_counts.py [--images 2 --boxes 20]
"""
import argparse
import collections
import os
import sys

import torch

# Run from a checkout: the repository root on the path, for ``benchmarks`` and the project.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from benchmarks.models import build_models, make_batch, train_step  # noqa: E402
from benchmarks.settings import BenchSettings  # noqa: E402
from benchmarks.syncs import SyncCounter, input_tensors  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--image-size", type=int, nargs=2, default=(256, 320))
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = BenchSettings(depth=18, image_size=tuple(args.image_size), syncs=True)
    models, errors = build_models(settings)
    if errors:
        raise SystemExit(f"could not build: {errors}")
    batch = make_batch(args.images, *args.image_size, args.boxes, settings.num_classes, 0)
    print(f"{args.images} images x {args.boxes} boxes, {args.image_size[0]}x{args.image_size[1]}")
    print("| model | where | this count (forward + backward) | plain, forward only |")
    print("|---|---|---|---|")
    totals = {}
    for name, model in models.items():
        train_step(model, batch)  # lazy initialisation, caches (as the benchmark)
        with SyncCounter(input_tensors(batch), "cpu") as full:
            train_step(model, batch)
        model.train()
        with EventStorage(), SyncCounter(input_tensors(batch), "cpu", naive=True) as plain:
            model(batch)
        places = collections.OrderedDict.fromkeys(list(full.by_location) + list(plain.by_location))
        for where in places:
            ours, theirs = full.by_location.get(where, 0), plain.by_location.get(where, 0)
            print(f"| {name} | `{where}` | {ours} | {theirs} |")
        totals[name] = (full.total_without_inputs, plain.total)
    print("\n| model | this count | plain, forward only |\n|---|---|---|")
    for name, (ours, theirs) in totals.items():
        print(f"| {name} | {ours} | {theirs} |")


if __name__ == "__main__":
    main()
