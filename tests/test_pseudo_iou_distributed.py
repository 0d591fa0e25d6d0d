"""The loss normalisers are all-reduced across workers: a batch split over 2 gloo workers gives,
averaged over the workers (what DDP's gradient averaging optimises), the single-process loss.
"""
import os
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from pseudo_iou.testing import tiny_pseudo_iou_cfg

SIZES = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]  # feature maps of a 64x64 input
# Worker 0 gets images 0-1 (boxes), worker 1 images 2-3 (no box at all: no local positives,
# so it must still join every all-reduce).
BOXES = [
    [[4.0, 6.0, 40.0, 50.0], [30.0, 2.0, 62.0, 20.0]],
    [[0.0, 0.0, 24.0, 24.0], [10.0, 10.0, 60.0, 63.0], [33.0, 40.0, 49.0, 56.0]],
    [],
    [],
]


def batch_inputs():
    """Head outputs and ground truth for the 4-image batch, identical in every process."""
    gen = torch.Generator().manual_seed(0)
    cls = [torch.randn(4, 3, h, w, generator=gen) - 2 for h, w in SIZES]
    ltrb = [torch.rand(4, 4, h, w, generator=gen) * 3 for h, w in SIZES]
    ctr = [torch.randn(4, 1, h, w, generator=gen) for h, w in SIZES]
    gt = []
    for i, boxes in enumerate(BOXES):
        inst = Instances((64, 64))
        inst.gt_boxes = Boxes(torch.tensor(boxes).reshape(-1, 4))
        inst.gt_classes = torch.arange(len(boxes)) % 3
        gt.append(inst)
    return cls, ltrb, ctr, gt


def losses_of(model, images):
    cls, ltrb, ctr, gt = batch_inputs()
    pick = lambda xs: [x[images] for x in xs]  # noqa: E731
    features = [torch.zeros(len(images), 1, h, w) for h, w in SIZES]
    with EventStorage():
        losses = model.forward_training(
            None, features, (pick(cls), pick(ltrb), pick(ctr)), [gt[i] for i in images]
        )
    return {k: v.item() for k, v in losses.items()}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=60),
    )
    try:
        model = build_model(tiny_pseudo_iou_cfg(num_classes=3))
        torch.save(losses_of(model, [2 * rank, 2 * rank + 1]), os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_workers_give_the_single_process_loss():
    model = build_model(tiny_pseudo_iou_cfg(num_classes=3))
    single = losses_of(model, [0, 1, 2, 3])
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        workers = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(2)]
    local = [losses_of(model, [0, 1]), losses_of(model, [2, 3])]  # normalised per process
    assert set(single) == {"loss_cls", "loss_box_reg", "loss_centerness"}
    for key in single:
        mean = (workers[0][key] + workers[1][key]) / 2
        assert abs(mean - single[key]) <= 1e-5 * abs(single[key]), key
    # Worker 1 has no positive: zero box/centerness losses, but its classification loss is
    # normalised by the positives of the whole batch (mean over workers), not by max(0, 1).
    assert workers[1]["loss_box_reg"] == 0.0 and workers[1]["loss_centerness"] == 0.0
    assert workers[1]["loss_cls"] < local[1]["loss_cls"] / 2
    # Worker 0's losses are its local sums over half the batch's normaliser: twice the
    # single-process-on-its-images values.
    for key in single:
        assert abs(workers[0][key] - 2 * local[0][key]) <= 1e-5 * abs(local[0][key]), key
