"""
How calls are timed: each from a device sync to a device sync, models interleaved round by
round (A B C D A B C D ...) after warm-up rounds, with the peak memory of every call.

Peak memory is the increase over the memory in use when the call starts. CUDA:
``torch.cuda.max_memory_allocated``. CPU: torch's CPU allocator has no peak counter (and
tracemalloc does not see it), so the peak resident set size is used: glibc's free lists are
trimmed (``malloc_trim(0)``), the kernel's high-water mark is reset (``/proc/self/clear_refs`` =
5), and the result is ``VmHWM`` after the call minus ``VmRSS`` before it (Linux only; else not
reported). This set-up runs before the clock starts.
"""
import ctypes
import gc
import logging
import re
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch

__all__ = [
    "PeakMemory",
    "Sample",
    "cpu_peak_rss_supported",
    "device_sync",
    "error_text",
    "interleaved",
    "is_oom",
    "median_or_none",
    "summary",
]

logger = logging.getLogger("benchmark")
MIB = float(1 << 20)


def device_sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if match is None:
        raise OSError(f"{key} not in /proc/self/status")
    return int(match.group(1))


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_peak_rss_supported() -> bool:
    """Whether the kernel lets this process reset and read its peak RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _proc_status_kib("VmHWM")
        return True
    except OSError:
        return False


class PeakMemory:
    """
    ``with PeakMemory(device) as m: ...`` -> ``m.peak_mib``: the peak memory above what was in
    use on entry (None where it cannot be measured). ``PeakMemory.method(device)`` names how.
    """

    _cpu_supported: Optional[bool] = None

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib: Optional[float] = None

    @classmethod
    def method(cls, device: torch.device) -> str:
        if device.type == "cuda":
            return "cuda: torch.cuda.max_memory_allocated minus memory_allocated before the call"
        if cls._cpu_supported is None:
            cls._cpu_supported = cpu_peak_rss_supported()
        if cls._cpu_supported:
            return ("cpu: peak RSS (VmHWM after the call, reset via /proc/self/clear_refs) minus "
                    "VmRSS before it, after gc + malloc_trim")
        return "unavailable (no /proc/self/clear_refs)"

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.method(self.device).startswith("cpu"):
            _malloc_trim()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._base = _proc_status_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / MIB
        elif self.method(self.device).startswith("cpu"):
            self.peak_mib = (_proc_status_kib("VmHWM") - self._base) / 1024.0


def summary(samples_s: List[float]) -> Dict[str, Any]:
    """Seconds -> {"median_ms", "min_ms", "max_ms", "samples_ms"}."""
    ms = [1000.0 * v for v in samples_s]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
            "samples_ms": ms}


def median_or_none(values: List[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def error_text(e: BaseException) -> str:
    """``"Type: first line of the message"``, as stored in the results."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def is_oom(e: BaseException) -> bool:
    return isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)) or "out of memory" in str(e)


@dataclass
class Sample:
    """One timed call: seconds (a tuple for assign_loss's (fwd, fwd+bwd)) and peak MiB."""

    seconds: Any
    peak_mib: Optional[float]


def interleaved(
    names: List[str],
    run: Callable[[str], Any],
    warmup: int,
    iters: int,
    device: torch.device,
    errors: Dict[str, str],
) -> Dict[str, List[Sample]]:
    """
    Call ``run(name)`` round-robin over ``names`` (A B C D A B C D ...): ``warmup`` untimed
    rounds, then ``iters`` timed ones. A call is timed from a device sync to a device sync
    unless ``run`` returns its own timing; the :class:`PeakMemory` set-up (gc, trim, counter
    reset) happens before the clock starts. A model that raises is dropped (error in ``errors``).
    """
    samples: Dict[str, List[Sample]] = {n: [] for n in names}
    for round_idx in range(warmup + iters):
        for name in names:
            if name in errors:
                continue
            try:
                with PeakMemory(device) as mem:
                    device_sync(device)
                    start = time.perf_counter()
                    value = run(name)
                    device_sync(device)
                    elapsed = time.perf_counter() - start
            except Exception as e:
                if not is_oom(e):
                    logger.exception(f"{name} failed")
                errors[name] = error_text(e)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if round_idx >= warmup:
                samples[name].append(Sample(elapsed if value is None else value, mem.peak_mib))
    return {n: v for n, v in samples.items() if n not in errors}
