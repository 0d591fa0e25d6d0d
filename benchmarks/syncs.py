"""
How host-device synchronisations are counted: the operations of a call that, on CUDA, make the
host wait for the device.

:class:`SyncCounter` works on any device (it is how the CPU-only machine counts them): a
``TorchDispatchMode`` sees every aten operation, forward and backward, and counts those that
synchronise on CUDA:

* **host reads** of a tensor's value: ``aten._local_scalar_dense`` (``.item()``, ``bool()``,
  ``int()``, ``float()``, a tensor in an ``if``), ``aten.is_nonzero``, ``aten.equal``,
  ``aten.allclose`` (they return a Python value, which the host must wait for);
* **data-dependent output sizes**: ``aten.nonzero`` (``torch.where(mask)``, ``argwhere``),
  ``aten.masked_select``, ``aten.index`` / ``aten.index_put(_)`` with a boolean index
  (``x[mask]``, ``x[mask] = t`` with a device tensor ``t``; counted once: CUDA runs a
  ``nonzero`` inside them, the CPU dispatches no separate ``nonzero``; the backward of
  ``x[mask]`` is another ``index_put`` with the mask, and it is counted too), ``aten._unique2`` and the other ``unique`` variants,
  ``aten.bincount`` (its length is the maximum value), torchvision's ``nms``: the host must
  learn the size before it can allocate the output;
* ``aten.repeat_interleave`` with tensor repeats and no ``output_size`` counts **2**: CUDA's
  ``repeat_interleave_common`` (``ATen/native/Repeat.h``) reads ``cumsum[-1].item()`` (the
  output size) and then ``(repeats >= 0).all().item()`` (the check that no repeat is negative);
  with ``output_size`` it reads neither, and with empty ``repeats`` it returns before both (0).

A ``TorchFunctionMode`` adds what never reaches the dispatcher on the CPU, the copies between
host and device:

* **device -> host**: ``Tensor.cpu``, ``Tensor.numpy``, ``Tensor.tolist`` of a device tensor;
* **host -> device**: ``Tensor.to`` / ``Tensor.cuda`` of a host tensor (blocking; a
  ``non_blocking=True`` copy is not counted), and ``torch.tensor`` / ``torch.as_tensor`` /
  ``Tensor.new_tensor`` of Python data placed on the device. CUDA's pageable-memory copy waits
  for the stream (``at::cuda::memcpy_and_sync``, reported by ``set_sync_debug_mode``). The
  copies of the call's inputs (``host_inputs``: the data loader's images and instances, which
  Detectron2's ``preprocess_image`` and ``Instances.to`` move image by image, the same for
  every detector) are counted apart, as ``input_to_device``.

Everything else, including ``.shape``, ``numel()``, ``topk``, ``sort``, ``max``, ``where`` with
three arguments, ``masked_fill``, long-index ``index`` / ``index_put`` / ``scatter``, does not
synchronise and is not counted.

Not counted, because CUDA does not synchronise there although the CPU run dispatches something
that looks as if it did:

* a boolean-mask ``index_put_`` / ``index_put`` (``accumulate=False``) with a one-element value
  on the host, which is what ``x[mask] = 0`` makes of a Python number on CUDA
  (``THPVariable_setitem`` builds the value on the CPU for a CUDA tensor): ATen's
  ``canDispatchToMaskedFill`` (``ATen/native/TensorAdvancedIndexingUtils.h``: one mask index,
  on ``self``'s device, value of one element on the CPU) sends it to ``masked_fill_``, which
  does not synchronise. A device tensor as the value, a second index, or ``accumulate=True``
  goes through ``nonzero`` (1);
* ``F.one_hot(x, num_classes)`` with ``num_classes`` given: on the CPU it reads the minimum and
  maximum (2 host reads), on CUDA it relies on ``scatter_``'s device assert instead
  (``ATen/native/Onehot.cpp``); without ``num_classes`` it reads the maximum (1).

Which tensors are "on the host": on CUDA, the CPU tensors. On the CPU every tensor is a CPU
tensor, so the counter simulates the placement the same code would have on CUDA: the
``host_inputs``, tensors made by factories (``torch.zeros``, ``torch.tensor``, ...) without a
``device`` argument, and whatever aten computes from host tensors alone, are host tensors;
``Tensor.to(...)`` with a device (or a tensor) makes a device tensor, ``Tensor.cpu()`` a host
tensor; every other tensor (parameters, anything computed from a device tensor) is a device
tensor. Operations on host tensors only are not counted (a host-side check of the inputs
costs no synchronisation). Limits: ``Tensor.to("cpu")`` is read as a move to the model's
device on the CPU (model code moves to ``self.device``; use ``.cpu()`` for the host), and a
``*_like`` factory with an explicit ``device`` keeps its input's placement.

:class:`CudaSyncCounter` is the cross-check on CUDA: ``torch.cuda.set_sync_debug_mode("warn")``
makes every synchronising CUDA call warn; the warnings are recorded and counted by source line.
"""
import collections
import os
import sys
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["CudaSyncCounter", "SyncCounter", "count_syncs", "input_tensors", "KINDS"]

# Kinds, in report order.
KINDS = ("host_read", "data_dependent_size", "device_to_host", "host_to_device",
         "input_to_device")
_HOST_READ = {"aten._local_scalar_dense", "aten.is_nonzero", "aten.equal", "aten.allclose"}
_DATA_DEPENDENT = {
    "aten.nonzero", "aten.argwhere", "aten.masked_select", "aten._unique", "aten._unique2",
    "aten.unique_dim", "aten.unique_consecutive", "aten.unique_dim_consecutive",
    "aten.bincount", "torchvision.nms",
}  # fmt: skip
_BOOL_INDEXED = {"aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"}
_FACTORIES = {
    torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.linspace,
    torch.logspace, torch.eye, torch.rand, torch.randn, torch.randint, torch.randperm,
    torch.tensor, torch.as_tensor, torch.scalar_tensor,
}  # fmt: skip
_TO_HOST = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist}
_TO_DEVICE = {torch.Tensor.to, torch.Tensor.cuda}
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_THIS_FILE = os.path.abspath(__file__)


def _caller() -> str:
    """``path:line`` of the innermost Python frame outside torch and this file: the code that
    asked for the synchronising operation (for the backward: the ``.backward()`` call)."""
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(_TORCH_DIR) and path != _THIS_FILE:
            short = path.split("site-packages" + os.sep)[-1]
            root = os.path.dirname(os.path.dirname(_THIS_FILE)) + os.sep
            return f"{short[len(root):] if short.startswith(root) else short}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def _tensors(tree: Any) -> List[Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, Tensor)]


def _aten_syncs(
    func, args, kwargs, is_host: Callable[[Tensor], bool], naive: bool = False
) -> Tuple[Optional[str], int]:
    """(kind, number) of the synchronisations the aten op ``func`` forces on CUDA; (None, 0)
    for none. ``is_host(t)``: whether ``t`` is a host tensor. ``naive``: the plain aten-level
    rule (no masked fill, one per ``repeat_interleave``; see :class:`SyncCounter`)."""
    name = str(func.overloadpacket)
    if name in _HOST_READ:
        return "host_read", 1
    if name in _DATA_DEPENDENT:
        return "data_dependent_size", 1
    if name in _BOOL_INDEXED and len(args) > 1:
        indices = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
        if any(isinstance(i, Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
            masked_fill = name != "aten.index" and not naive
            if masked_fill and _dispatches_to_masked_fill(args, kwargs, is_host):
                return None, 0
            return "data_dependent_size", 1
    if name == "aten.repeat_interleave" and kwargs.get("output_size") is None:
        # The Tensor overload takes the repeats first; self_Tensor (self, repeats, dim).
        repeats = args[0] if func._overloadname == "Tensor" else (args[1:2] or [None])[0]
        if isinstance(repeats, Tensor):
            # Repeat.h: cumsum[-1].item() and (repeats >= 0).all().item(), unless empty
            reads = 1 if naive else 2
            return "data_dependent_size", reads if repeats.numel() > 0 else 0
    return None, 0


def _dispatches_to_masked_fill(args, kwargs, is_host: Callable[[Tensor], bool]) -> bool:
    """Whether a boolean-indexed ``index_put(_)`` goes to ``masked_fill_`` on CUDA (ATen's
    ``canDispatchToMaskedFill``): not accumulating, a value of one element on the host, and
    exactly one index, a mask on the indexed tensor's device (the other indices None)."""
    self, indices = args[0], args[1]
    value = args[2] if len(args) > 2 else kwargs.get("values")
    accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
    if accumulate or not isinstance(value, Tensor) or value.numel() != 1 or not is_host(value):
        return False
    given = [i for i in indices if i is not None]
    return (
        len(given) == 1
        and given[0].dtype in (torch.bool, torch.uint8)
        and is_host(given[0]) == is_host(self)
    )


class _State:
    """Counts, and which tensors stand for host tensors."""

    def __init__(self, host_inputs: Iterable[Tensor], simulate: bool, naive: bool = False):
        self.simulate = simulate  # CPU run: placement on CUDA simulated
        self.naive = naive  # every tensor on the device, plain aten-level rules
        self.counts: Dict[str, collections.Counter] = {k: collections.Counter() for k in KINDS}
        self.locations: collections.Counter = collections.Counter()
        self.host = WeakIdKeyDictionary()
        self.inputs = WeakIdKeyDictionary()
        self.scalar_setitem = 0  # inside ``x[index] = number``: its value is made on the host
        self.cuda_skips_reads = 0  # inside an op whose host reads run on the CPU only
        for t in host_inputs:
            self.host[t] = True
            self.inputs[t] = True

    def count(self, kind: str, op: str, number: int = 1) -> None:
        self.counts[kind][op] += number
        if kind != "input_to_device":
            self.locations[_caller()] += number

    def is_host(self, t: Tensor) -> bool:
        if self.naive:
            return False
        if not self.simulate:
            return t.device.type == "cpu"
        return t in self.host

    def mark(self, tree: Any, host: bool) -> None:
        if not self.simulate:
            return
        for t in _tensors(tree):
            if host:
                self.host[t] = True
            else:
                self.host.pop(t, None)


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, state: _State):
        super().__init__()
        self.state = state

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = _tensors((args, kwargs))
        on_host = bool(tensors) and all(self.state.is_host(t) for t in tensors)
        if tensors and not on_host and not self.state.cuda_skips_reads:
            kind, number = _aten_syncs(func, args, kwargs, self.state.is_host, self.state.naive)
            if number:
                self.state.count(kind, str(func.overloadpacket), number)
        out = func(*args, **kwargs)
        made_on_host = self.state.scalar_setitem and str(func.overloadpacket) == "aten.lift_fresh"
        if on_host or made_on_host:
            self.state.mark(out, host=True)
        return out


def _fresh(out: Any, src: Tensor) -> Any:
    """``out``, or an alias of it if it is ``src`` itself (a no-op move on the CPU), so that
    the two can have different placements."""
    return out.view_as(out) if out is src else out


def _moves_to_device(args, kwargs) -> bool:
    """Whether ``Tensor.to(*args, **kwargs)`` names a device (or a tensor to copy it from)."""
    if "device" in kwargs or "other" in kwargs:
        return True
    return any(isinstance(a, (str, torch.device, Tensor)) for a in args[1:])


class _FunctionCounter(TorchFunctionMode):
    def __init__(self, state: _State):
        super().__init__()
        self.state = state

    def _count(self, kind: str, name: str) -> None:
        self.state.count(kind, name)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        st = self.state
        if func in _TO_HOST and isinstance(args[0], Tensor):
            src = args[0]
            if not st.is_host(src):
                self._count("device_to_host", f"Tensor.{func.__name__}")
            out = func(*args, **kwargs)
            if isinstance(out, Tensor):
                out = _fresh(out, src)
                st.mark(out, host=True)
            return out
        if func in _TO_DEVICE and isinstance(args[0], Tensor):
            src = args[0]
            out = func(*args, **kwargs)
            if func is torch.Tensor.cuda or _moves_to_device(args, kwargs):
                like = [t for t in list(args[1:]) + [kwargs.get("other")] if isinstance(t, Tensor)]
                if not st.simulate:
                    to_host = out.device.type == "cpu"
                else:  # to a device, or to where the tensor given as the model lives
                    to_host = bool(like) and st.is_host(like[0])
                if st.is_host(src) and not to_host and not kwargs.get("non_blocking"):
                    kind = "input_to_device" if src in st.inputs else "host_to_device"
                    self._count(kind, f"Tensor.{func.__name__}")
                elif not st.is_host(src) and to_host and not kwargs.get("non_blocking"):
                    self._count("device_to_host", f"Tensor.{func.__name__}")
                out = _fresh(out, src)
                st.mark(out, host=to_host)
            return out
        if func is torch.Tensor.__setitem__ and not isinstance(args[2], Tensor):
            # x[index] = number: THPVariable_setitem makes the number a CPU tensor for a CUDA x
            st.scalar_setitem += 1
            try:
                return func(*args, **kwargs)
            finally:
                st.scalar_setitem -= 1
        one_hot = func is F.one_hot and isinstance(args[0], Tensor) and not st.naive
        if one_hot and not st.is_host(args[0]):
            num_classes = args[1] if len(args) > 1 else kwargs.get("num_classes", -1)
            st.cuda_skips_reads += 1  # Onehot.cpp: the min / max checks run off CUDA only
            try:
                out = func(*args, **kwargs)
            finally:
                st.cuda_skips_reads -= 1
            if num_classes == -1 and args[0].numel() > 0:  # the maximum sizes the output
                self._count("host_read", "aten._local_scalar_dense")
            return out
        if func is torch.Tensor.new_tensor and isinstance(args[0], Tensor):
            out = func(*args, **kwargs)
            on_device = (out.device.type != "cpu" if not st.simulate
                         else kwargs.get("device") is not None or not st.is_host(args[0]))
            if on_device and not isinstance(args[1] if len(args) > 1 else None, Tensor):
                self._count("host_to_device", "Tensor.new_tensor")
            st.mark(out, host=not on_device)
            return out
        if func in _FACTORIES:
            out = func(*args, **kwargs)
            on_device = (out.device.type != "cpu" if not st.simulate
                         else kwargs.get("device") is not None)
            data = args[0] if args else kwargs.get("data")
            if func in (torch.tensor, torch.as_tensor) and isinstance(data, Tensor):
                return out  # placement follows the data (aten propagates it)
            if func in (torch.tensor, torch.as_tensor) and on_device:
                self._count("host_to_device", f"torch.{func.__name__}")
            st.mark(out, host=not on_device)
            return out
        return func(*args, **kwargs)


class SyncCounter:
    """
    ``with SyncCounter(host_inputs) as c: step()`` counts the operations of ``step`` that
    synchronise host and device on CUDA (module docstring: which, and why).

    Args:
        host_inputs: tensors that are on the host when ``step`` starts (the data loader's
            output); on a CPU run every other tensor that exists before is taken as a device
            tensor.
        device: where ``step`` runs; on CUDA the placement is the tensors' real device.
        naive: count as a plain aten-level counter would, for comparisons with such counts
            (not what CUDA does): no host / device placement (every tensor a device tensor, so
            reads of host tensors count), each ``repeat_interleave`` and boolean-indexed
            ``index_put`` once (no masked fill), ``F.one_hot``'s CPU-only reads counted. The
            input copies are then not seen (the inputs count as device tensors).

    After the block: ``c.counts`` {kind: {op: n}}, ``c.total``, ``c.total_without_inputs``,
    ``c.by_location`` {"path:line": n} (the caller of each counted operation, input copies
    left out; most frequent first).
    """

    def __init__(
        self, host_inputs: Iterable[Tensor] = (), device: Any = "cpu", *, naive: bool = False
    ):
        simulate = torch.device(device).type == "cpu"
        self._state = _State(host_inputs, simulate=simulate, naive=naive)
        self._modes: List[Any] = []

    def __enter__(self) -> "SyncCounter":
        self._modes = [_FunctionCounter(self._state), _DispatchCounter(self._state)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = []

    @property
    def counts(self) -> Dict[str, Dict[str, int]]:
        return {kind: dict(sorted(c.items())) for kind, c in self._state.counts.items()}

    @property
    def by_location(self) -> Dict[str, int]:
        return dict(self._state.locations.most_common())

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self._state.counts.values())

    @property
    def total_without_inputs(self) -> int:
        return self.total - sum(self._state.counts["input_to_device"].values())


class CudaSyncCounter:
    """
    ``with CudaSyncCounter(device) as c: step()`` -> ``c.total`` and ``c.by_location``
    ({"file:line": n}): the synchronising CUDA calls of ``step`` as reported by
    ``torch.cuda.set_sync_debug_mode("warn")`` (the mode is restored afterwards). Includes the
    device work of ``step`` only; the device is synchronised (uncounted) before and after.
    """

    MESSAGE = "called a synchronizing CUDA operation"

    def __init__(self, device: Any = "cuda"):
        self.device = torch.device(device)
        self.total = 0
        self.by_location: Dict[str, int] = {}

    def __enter__(self) -> "CudaSyncCounter":
        torch.cuda.synchronize(self.device)
        self._previous = torch.cuda.get_sync_debug_mode()
        self._catch = warnings.catch_warnings(record=True)
        self._log = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.set_sync_debug_mode(self._previous)
        self._catch.__exit__(*exc)
        torch.cuda.synchronize(self.device)
        places = collections.Counter(
            f"{w.filename}:{w.lineno}" for w in self._log if self.MESSAGE in str(w.message))
        self.by_location = dict(places.most_common())
        self.total = sum(places.values())


def input_tensors(batched_inputs: List[Dict[str, Any]]) -> List[Tensor]:
    """Every tensor of Detectron2 ``batched_inputs`` (images and ``Instances`` fields)."""
    found: List[Tensor] = []
    for item in batched_inputs:
        for value in item.values():
            if isinstance(value, Tensor):
                found.append(value)
            elif hasattr(value, "get_fields"):  # Instances
                for field in value.get_fields().values():
                    tensor = getattr(field, "tensor", field)  # Boxes -> its tensor
                    if isinstance(tensor, Tensor):
                        found.append(tensor)
    return found


def count_syncs(
    step: Callable[[], Any], batched_inputs: List[Dict[str, Any]], device: Any
) -> Dict[str, Any]:
    """
    The synchronisations of one call of ``step`` (which reads ``batched_inputs``):
    {"total", "without_inputs", "by_kind" {kind: n}, "by_op" {kind: {op: n}}, "by_location"
    {"path:line": n}} and, on CUDA,
    "cuda_debug_mode" {"total", "by_location"} from a second call under
    :class:`CudaSyncCounter`.
    """
    device = torch.device(device)
    with SyncCounter(input_tensors(batched_inputs), device) as counter:
        step()
    result: Dict[str, Any] = {
        "total": counter.total,
        "without_inputs": counter.total_without_inputs,
        "by_kind": {k: sum(v.values()) for k, v in counter.counts.items()},
        "by_op": {k: v for k, v in counter.counts.items() if v},
        "by_location": counter.by_location,
    }
    if device.type == "cuda":
        with CudaSyncCounter(device) as cuda_counter:
            step()
        result["cuda_debug_mode"] = {"total": cuda_counter.total,
                                     "by_location": cuda_counter.by_location}
    return result
