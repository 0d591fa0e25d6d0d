"""Which device a run uses. ``MODEL.DEVICE`` (yacs) or ``train.device`` (Python configs) is what
the user asked for, and it is checked where
the config is read (and, for ``train_net.py``, in the launching process, before any worker
starts): a run that asks for CUDA where there is none is an error, never a silent CPU run.
Imports torch only, so ``python -m anchor_free_app.device`` answers in a second."""
import sys

import torch

__all__ = [
    "DeviceError",
    "PYTHON_DEVICE_KEY",
    "YACS_DEVICE_KEY",
    "available_device",
    "check_device",
    "check_launch",
]


class DeviceError(RuntimeError):
    """The device a config or command line asks for is not there."""


def _cuda_found() -> str:
    """What torch sees of CUDA, for error messages."""
    return (
        f"torch.cuda.is_available()={torch.cuda.is_available()}, "
        f"torch.cuda.device_count()={torch.cuda.device_count()}, "
        f"torch.version.cuda={torch.version.cuda}"
    )


YACS_DEVICE_KEY = "MODEL.DEVICE"
PYTHON_DEVICE_KEY = "train.device"


def _setting(key: str, value: str) -> str:
    """How the command line sets ``key``: ``MODEL.DEVICE cpu`` (yacs), ``train.device=cpu``."""
    return f"{key} {value}" if key == YACS_DEVICE_KEY else f"{key}={value}"


def available_device() -> str:
    """``"cuda"`` when torch sees a GPU, else ``"cpu"``: what ``make demo`` passes as
    ``MODEL.DEVICE`` (``python -m anchor_free_app.device`` prints it)."""
    return "cuda" if torch.cuda.is_available() and torch.cuda.device_count() > 0 else "cpu"


def check_device(device: str, key: str = YACS_DEVICE_KEY) -> None:
    """
    Raise :class:`DeviceError` if ``device`` (the config's ``key``: ``MODEL.DEVICE`` or
    ``train.device``) is a CUDA device that this process cannot use: no CUDA at all, or
    ``cuda:K`` with K not below the device count. Other devices (``cpu``, ...) are left to torch.
    """
    if not device.startswith("cuda"):
        return
    index = device.partition(":")[2]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cpu = _setting(key, "cpu")
    if count == 0:
        raise DeviceError(
            f"{key} is {device!r} but CUDA is not available ({_cuda_found()}). "
            f"To run on the CPU, pass {cpu} (train_net.py: trailing '{cpu}', then --num-gpus N "
            f"starts N CPU worker processes; demo.py: --opts {cpu})."
        )
    if index and (not index.isdigit() or int(index) >= count):
        raise DeviceError(
            f"{key} is {device!r} but there are {count} CUDA devices ({_cuda_found()})."
        )


def check_launch(device: str, num_gpus_per_machine: int, key: str = YACS_DEVICE_KEY) -> str:
    """
    Check, in the launching process, that ``--num-gpus`` workers on ``MODEL.DEVICE`` can run on
    this machine; return a sentence saying what will run. CUDA: ``device`` must be usable
    (:func:`check_device`) and ``num_gpus_per_machine`` at most the number of GPUs. CPU:
    ``num_gpus_per_machine`` CPU worker processes, asked for explicitly with ``MODEL.DEVICE cpu``.
    """
    if num_gpus_per_machine < 1:
        raise ValueError(f"--num-gpus must be at least 1, got {num_gpus_per_machine}")
    check_device(device, key)
    if device.startswith("cuda"):
        count = torch.cuda.device_count()
        if num_gpus_per_machine > count:
            raise DeviceError(
                f"--num-gpus {num_gpus_per_machine} but this machine has {count} CUDA devices "
                f"({_cuda_found()}). Pass --num-gpus {count} or fewer, or "
                f"{_setting(key, 'cpu')} for "
                f"{num_gpus_per_machine} CPU worker processes."
            )
        return f"{_setting(key, device)}: {num_gpus_per_machine} GPU worker(s) per machine"
    if device == "cpu":
        if num_gpus_per_machine == 1:
            return f"{_setting(key, 'cpu')}: one process on the CPU"
        return (
            f"{_setting(key, 'cpu')}: {num_gpus_per_machine} CPU worker processes per machine "
            "(gloo backend)"
        )
    if num_gpus_per_machine > 1:
        raise DeviceError(
            f"--num-gpus {num_gpus_per_machine} needs {key} cuda (one process per GPU) "
            f"or cpu (CPU worker processes), not {device!r}."
        )
    return f"{_setting(key, device)}: one process"


if __name__ == "__main__":
    # ``python -m anchor_free_app.device``: print the device a run should ask for (stdout) and why
    # (stderr), e.g. ``MODEL.DEVICE $(python -m anchor_free_app.device)``.
    chosen = available_device()
    why = "CUDA found" if chosen == "cuda" else "no CUDA found"
    print(f"MODEL.DEVICE {chosen}: {why} ({_cuda_found()})", file=sys.stderr)
    print(chosen)
