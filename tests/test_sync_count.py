"""The synchronisation counter of the benchmark (``benchmarks/syncs.py``): exact counts on small
functions with a known number of each kind of synchronising operation, none for arithmetic,
and the simulated host / device placement of a CPU run."""
import os
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from benchmarks.syncs import CudaSyncCounter, SyncCounter, count_syncs, input_tensors  # noqa: E402


def _nonzero_counts(counter):
    return {(kind, op): n for kind, ops in counter.counts.items() for op, n in ops.items() if n}


def test_known_numbers_of_each_kind_are_counted_exactly():
    x = torch.randn(10, requires_grad=True)  # made before the counter: a device tensor
    with SyncCounter() as c:
        mask = x > 0
        a = x.detach().sum().item()  # 1 host read
        b = float(x.detach().max())  # 1 host read
        where = torch.nonzero(mask)  # 1 data-dependent size
        y = x[mask]  # 1 boolean index (counted once, no separate nonzero on the CPU)
    assert _nonzero_counts(c) == {
        ("host_read", "aten._local_scalar_dense"): 2,
        ("data_dependent_size", "aten.nonzero"): 1,
        ("data_dependent_size", "aten.index"): 1,
    }
    assert c.total == 4 == c.total_without_inputs
    # Where: the lines of this file that asked for them.
    assert sum(c.by_location.values()) == 4
    assert all(loc.startswith("tests/test_sync_count.py:") for loc in c.by_location)
    assert len(c.by_location) == 4  # four lines, one operation each
    with SyncCounter() as c:  # the backward of x[mask] indexes with the mask again
        y.sum().backward()
    assert _nonzero_counts(c) == {("data_dependent_size", "aten.index_put"): 1}
    assert (a, b, where.shape[1]) == (a, b, 1)


def test_arithmetic_and_fixed_size_ops_count_zero():
    x = torch.randn(6, 5, requires_grad=True)
    idx = torch.tensor([0, 2, 4])
    with SyncCounter() as c:
        y = (x * 2 + 1).sigmoid()
        y = torch.where(y > 0.5, y, torch.zeros_like(y)).masked_fill(y < 0.1, 0.0)
        top = y.topk(2, dim=1).values.sum() + y.max() + y[idx].sum()  # long index
        z = torch.zeros(6, 5).index_put((idx,), y[idx])  # long index_put
        r = torch.repeat_interleave(torch.arange(3), torch.tensor([1, 2, 3]), output_size=6)
        loss = top + z.sum() + y.new_zeros(()) + r.sum() * 0 + float(y.shape[0])
        loss.backward()
    assert c.total == 0, c.counts


def test_data_dependent_ops():
    v = torch.tensor([3, 1, 3, 0]) * 1  # computed inside no counter: a device tensor
    with SyncCounter() as c:
        torch.unique(v)
        torch.bincount(v)
        torch.repeat_interleave(v)  # tensor repeats, no output_size
        v.masked_select(v > 1)
        z = v.clone()
        z[v > 1] = 0  # boolean index_put_
    counts = c.counts["data_dependent_size"]
    assert sum(counts.values()) == 5 == c.total
    assert counts["aten.bincount"] == counts["aten.repeat_interleave"] == 1
    assert counts["aten.masked_select"] == counts["aten.index_put_"] == 1


def test_cpu_run_simulates_where_tensors_live_on_cuda():
    image = torch.rand(3, 4, 5)
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    with SyncCounter([image, boxes]) as c:
        # Host work on the inputs and on host-made tensors: free.
        assert bool((boxes[:, 2:] >= boxes[:, :2]).all())
        sizes = torch.tensor([4, 5])
        int(sizes.max())
        boxes[boxes[:, 0] >= 0].tolist()
        # To the device: the input copy, then reads of device values.
        on_device = image.to(torch.device("cpu"))
        float(on_device.mean())  # host read
        on_device.flatten()[:3].tolist()  # device -> host
        strides = torch.tensor([8, 16], device="cpu")  # Python data to the device
        steps = torch.arange(4, device="cpu")  # made on the device: no copy
        int(steps.sum() + strides.sum())  # host read
        on_device.cpu().sum().item()  # device -> host, then a host read: free
    assert _nonzero_counts(c) == {
        ("input_to_device", "Tensor.to"): 1,
        ("host_read", "aten._local_scalar_dense"): 2,
        ("device_to_host", "Tensor.tolist"): 1,
        ("device_to_host", "Tensor.cpu"): 1,
        ("host_to_device", "torch.tensor"): 1,
    }
    assert c.total == 6 and c.total_without_inputs == 5
    assert sum(c.by_location.values()) == 5  # the input copy has no location: not ours


def test_count_syncs_reports_kinds_and_inputs_of_detectron2_batched_inputs():
    from detectron2.structures import Boxes, Instances

    batch = []
    for _ in range(2):
        inst = Instances((4, 5))
        inst.gt_boxes = Boxes(torch.tensor([[0.0, 0.0, 2.0, 3.0]]))
        inst.gt_classes = torch.tensor([1])
        batch.append({"image": torch.zeros(3, 4, 5, dtype=torch.uint8), "instances": inst})
    assert len(input_tensors(batch)) == 6

    def step():
        images = [x["image"].to("cpu").float() for x in batch]
        gt = [x["instances"].to("cpu") for x in batch]
        return sum(float(i.sum()) for i in images) + sum(len(g) for g in gt)

    result = count_syncs(step, batch, "cpu")
    assert result["by_kind"]["input_to_device"] == 6  # image, boxes, classes per image
    assert result["by_kind"]["host_read"] == 2
    assert result["total"] == 8 and result["without_inputs"] == 2
    assert "cuda_debug_mode" not in result


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_debug_mode_sees_the_counted_synchronisations():
    x = torch.randn(100, device="cuda")
    with CudaSyncCounter() as cuda:
        x.sum().item()
        x[x > 0].sum()
    with SyncCounter(device="cuda") as c:
        x.sum().item()
        x[x > 0].sum()
    assert c.total == 2
    assert cuda.total >= 2
