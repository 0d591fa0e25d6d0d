#!/usr/bin/env python
"""
Float32 accuracy of AutoAssign's written-out GIoU-likelihood gradient
(``autoassign.loss.localization_likelihood``) and of float32 autograd through the same forward
operations (``anchor_free.losses.giou_loss``, fvcore's), both against float64 autograd, on the
in-box pairs of random boxes in an 800x1333 image with three kinds of predictions: the
release's initial boxes (4 strides per side, 1% noise), random (the tests' scenes), and
near-exact (0.1% off the object). Per scene: the whole gradient's normwise relative error, and
the largest and 99.9th percentile of the pairs' own (4-value) normwise relative errors (pairs
with a nonzero gradient).

    .venv/bin/python benchmarks/experiments/giou_grad_accuracy.py [--boxes 20 100 1000]
"""
import argparse
import os
import sys

import torch

# Run from a checkout: the repository root on the path, for the project.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from anchor_free.inbox import inbox_pairs  # noqa: E402
from anchor_free.losses import giou_loss  # noqa: E402
from autoassign.loss import localization_likelihood  # noqa: E402

GRIDS = [(100, 167), (50, 84), (25, 42), (13, 21), (7, 11)]  # 800x1333, strides 8-128
STRIDES = [8, 16, 32, 64, 128]
LOC_LAMBDA = 5.0


def autograd_likelihood(pred: torch.Tensor, target: torch.Tensor, loc_lambda: float):
    """exp(-lambda GIoU loss) through autograd (the previous implementation)."""
    boxes = lambda ltrb: torch.cat([-ltrb[:, :2], ltrb[:, 2:]], dim=1)  # noqa: E731
    return torch.exp(-loc_lambda * giou_loss(boxes(pred), boxes(target)))


def scenes(num_boxes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    size = torch.exp(torch.empty(num_boxes, 2).uniform_(2.08, 6.68, generator=g))  # 8-800 px
    center = torch.rand(num_boxes, 2, generator=g) * torch.tensor([1333.0, 800.0])
    pairs = inbox_pairs(torch.cat([center - size / 2, center + size / 2], 1), GRIDS, STRIDES, 0.0)
    target = pairs.ltrb
    noise = torch.randn(target.shape, generator=g)
    yield "initial (4 strides)", 4.0 * pairs.stride[:, None] * torch.exp(0.01 * noise), target
    yield "random", torch.relu(target * torch.exp(0.5 * noise) - 0.1 * target.mean()), target
    yield "near-exact", target * (1 + 1e-3 * noise), target


def gradient(fn, pred, target, weight, dtype) -> torch.Tensor:
    leaf = pred.to(dtype).clone().requires_grad_(True)
    (fn(leaf, target.to(dtype), LOC_LAMBDA) * weight.to(dtype)).sum().backward()
    return leaf.grad.double()


def errors(grad: torch.Tensor, reference: torch.Tensor) -> str:
    norm = reference.norm(dim=1)
    keep = norm > 0  # pairs with a zero gradient (weight or likelihood underflowed) have none
    per_pair = (grad - reference)[keep].norm(dim=1) / norm[keep]
    whole = (grad - reference).norm() / reference.norm()
    return f"{whole:.2e} / {per_pair.max():.2e} / {per_pair.quantile(0.999):.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boxes", type=int, nargs="+", default=[20, 100, 1000])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("errors against float64 autograd: whole gradient / largest pair / 99.9th percentile pair")
    print("\n| boxes | pairs | predictions | float32 autograd | float32 written-out |")
    print("|---|---|---|---|---|")
    for num_boxes in args.boxes:
        for name, pred, target in scenes(num_boxes, seed=num_boxes):
            weight = torch.rand(pred.shape[0], generator=torch.Generator().manual_seed(0))
            reference = gradient(autograd_likelihood, pred, target, weight, torch.float64)
            auto32 = gradient(autograd_likelihood, pred, target, weight, torch.float32)
            written32 = gradient(localization_likelihood, pred, target, weight, torch.float32)
            print(f"| {num_boxes} | {pred.shape[0]} | {name} | {errors(auto32, reference)} | "
                  f"{errors(written32, reference)} |", flush=True)


if __name__ == "__main__":
    main()
