"""Detectron2's ``launch`` for GPU jobs and CPU worker processes (gloo) when the config asks for
the CPU, after the device checks of :mod:`anchor_free_app.device`, in the launching process."""
import logging
from datetime import timedelta
from typing import Callable, Optional

import torch.distributed as dist
import torch.multiprocessing as mp

from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from .device import check_launch

__all__ = ["launch"]

logger = logging.getLogger(__name__)


def _cpu_worker(
    local_rank: int,
    main_func: Callable,
    world_size: int,
    num_workers_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
):
    global_rank = machine_rank * num_workers_per_machine + local_rank
    dist.init_process_group(
        backend="gloo",
        init_method=dist_url,
        world_size=world_size,
        rank=global_rank,
        timeout=timeout,
    )
    if hasattr(comm, "create_local_process_group"):  # Detectron2 main
        comm.create_local_process_group(num_workers_per_machine)
    else:  # Detectron2 v0.6 sets the local group inline in its (CUDA-only) launch
        for i in range(world_size // num_workers_per_machine):
            ranks = list(range(i * num_workers_per_machine, (i + 1) * num_workers_per_machine))
            group = dist.new_group(ranks)
            if i == machine_rank:
                comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    main_func(*args)


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: tuple = (),
    timeout: timedelta = timedelta(minutes=30),
    device: str = "cuda",
    device_key: str = "MODEL.DEVICE",
):
    """
    Run ``main_func(*args)`` in ``num_gpus_per_machine`` worker processes per machine on
    ``device`` (the config's ``device_key``: ``MODEL.DEVICE`` or ``train.device``), checked
    first by :func:`check_launch`, so a
    GPU job on a machine without (enough) GPUs fails here, before any worker starts.

    CUDA: Detectron2's ``launch``. CPU with several workers: CPU worker processes with the gloo
    backend (Detectron2 v0.6's ``launch`` asserts CUDA; main's fails later in DDP).
    """
    logger.info(check_launch(device, num_gpus_per_machine, device_key))
    world_size = num_machines * num_gpus_per_machine
    if device != "cpu" or world_size == 1:
        return d2_launch(
            main_func,
            num_gpus_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
        )
    if dist_url is None or dist_url == "auto":
        if num_machines > 1:
            raise ValueError("--dist-url must be given (tcp://HOST:PORT) for a multi-machine job")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )


def _find_free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

