"""The synchronisation counter of the benchmark (``benchmarks/syncs.py``): exact counts on small
functions with a known number of each kind of synchronising operation, none for arithmetic,
and the simulated host / device placement of a CPU run."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

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
        v.masked_select(v > 1)
        z = v.clone()
        z[v > 1] = v[:1].squeeze()  # boolean index_put_ of a device value: nonzero
    counts = c.counts["data_dependent_size"]
    assert counts == {
        "aten._unique2": 1, "aten.bincount": 1, "aten.masked_select": 1, "aten.index_put_": 1,
    }  # fmt: skip
    assert c.total == 4


def test_repeat_interleave_without_output_size_reads_the_host_twice():
    """ATen/native/Repeat.h: cumsum[-1].item() (the size) and (repeats >= 0).all().item()."""
    v = torch.tensor([3, 1, 3, 0]) * 1  # a device tensor
    x = torch.randn(4) * 1
    cases = {
        "torch.repeat_interleave(repeats)": (lambda: torch.repeat_interleave(v), 2),
        "x.repeat_interleave(repeats, dim=0)": (lambda: x.repeat_interleave(v, dim=0), 2),
        "one repeat for all, as a tensor": (lambda: x.repeat_interleave(v[:1], dim=0), 2),
        "with output_size": (lambda: torch.repeat_interleave(v, output_size=7), 0),
        "x.repeat_interleave(v, dim=0, output_size=7)": (
            lambda: x.repeat_interleave(v, dim=0, output_size=7), 0),
        "empty repeats (returns before reading)": (lambda: torch.repeat_interleave(v[:0]), 0),
        "python int repeats": (lambda: x.repeat_interleave(2), 0),
        "repeats on the host": (lambda: torch.repeat_interleave(torch.tensor([1, 2])), 0),
    }  # fmt: skip
    for name, (call, expected) in cases.items():
        with SyncCounter() as c:
            call()
        assert c.total == expected, name
        if expected:
            assert c.counts["data_dependent_size"] == {"aten.repeat_interleave": expected}
            assert list(c.by_location.values()) == [expected]


def test_boolean_mask_assignment_of_a_host_scalar_is_a_masked_fill():
    """On CUDA, ``x[mask] = number`` and ``x.index_put_((mask,), host_scalar)`` dispatch to
    masked_fill_ (ATen's canDispatchToMaskedFill): no nonzero, no synchronisation. A device
    value, more than one element, a second index or accumulate=True take the nonzero route."""
    base = torch.randn(4, 3) * 1  # a device tensor
    mask = base[:, 0] > 0  # device mask over dim 0
    mask2 = base > 0  # over both dims
    column = torch.tensor([True, False, True]) * 1 > 0  # a device mask over dim 1
    cases = {
        "x[mask] = 0": (lambda z: z.__setitem__(mask, 0), 0),
        "x[mask2] = 1.5": (lambda z: z.__setitem__(mask2, 1.5), 0),
        "x[:, column] = True": (lambda z: z.__setitem__((slice(None), column), True), 0),
        "host 0-dim tensor value": (lambda z: z.__setitem__(mask, torch.tensor(2.0)), 0),
        "index_put_ of a host scalar": (lambda z: z.index_put_((mask,), torch.tensor(2.0)), 0),
        "index_put (out of place)": (lambda z: z.index_put((mask2,), torch.tensor(2.0)), 0),
        "device 0-dim tensor value": (lambda z: z.__setitem__(mask, base[0, 0]), 1),
        "host value of a row": (lambda z: z.__setitem__(mask, torch.zeros(3)), 1),
        "accumulate=True": (
            lambda z: z.index_put_((mask,), torch.tensor(2.0), accumulate=True), 1),
        "x[mask] += 1 (a gather, then a device value)": (
            lambda z: z.__setitem__(mask, z[mask] + 1), 2),
    }  # fmt: skip
    for name, (call, expected) in cases.items():
        z = base.clone()
        with SyncCounter() as c:
            call(z)
        assert c.total == expected, (name, c.counts)


def test_one_hot_reads_the_host_only_without_num_classes():
    """ATen/native/Onehot.cpp: the CPU checks the minimum and maximum (2 host reads); CUDA
    reads nothing when num_classes is given, the maximum (1) when it is not."""
    labels = torch.tensor([0, 2, 1]) * 1  # a device tensor
    with SyncCounter() as c:
        F.one_hot(labels, num_classes=4)
        F.one_hot(labels, 3)
        F.one_hot(labels[:0], 3)
        F.one_hot(torch.tensor([0, 1]), 2)  # host labels: a host op, free
    assert c.total == 0, c.counts
    with SyncCounter() as c:
        F.one_hot(labels)
    assert c.counts["host_read"] == {"aten._local_scalar_dense": 1} and c.total == 1


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_debug_mode_agrees_on_repeat_interleave_and_masked_fill():
    repeats = torch.tensor([3, 1, 0, 2], device="cuda")
    x = torch.randn(4, 3, device="cuda")
    mask = x > 0
    for call, expected in (
        (lambda: torch.repeat_interleave(repeats), 2),
        (lambda: torch.repeat_interleave(repeats, output_size=6), 0),
        (lambda: x.clone().__setitem__(mask, 0.0), 0),
        (lambda: F.one_hot(repeats, 4), 0),
    ):
        with CudaSyncCounter() as cuda:
            call()
        with SyncCounter(device="cuda") as c:
            call()
        assert c.total == cuda.total == expected


def test_naive_rules_count_as_a_plain_aten_level_counter():
    """``naive=True`` (benchmarks/experiments/reconcile_sync_counts.py): no placement, one per
    repeat_interleave and boolean-indexed index_put, F.one_hot's CPU reads: what a plain
    counter of aten operations reports, to compare with such counts."""
    v = torch.tensor([3, 1, 3, 0]) * 1
    x = torch.randn(4) * 1

    def step():
        torch.repeat_interleave(v)  # CUDA: 2
        x.clone()[x > 0] = 0  # CUDA: a masked fill, 0
        F.one_hot(v, 4)  # CUDA: 0; the CPU reads min and max
        int(torch.tensor([2, 3]).max())  # a host tensor: 0 on CUDA

    for naive, expected in ((False, 2), (True, 1 + 1 + 2 + 1)):
        with SyncCounter(naive=naive) as c:
            step()
        assert c.total == expected, (naive, c.counts)
