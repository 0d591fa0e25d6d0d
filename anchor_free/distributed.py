"""Cross-worker loss normalisers.

Detectron2's ``DenseDetector._ema_update`` is a per-process moving average: not synchronised
across workers and not checkpointed. Both papers' released code normalises each loss by the
*current* value averaged over GPUs (mmdet ``reduce_mean``); this is that, once per call.
"""
import torch.distributed as dist
from torch import Tensor

from detectron2.utils import comm

__all__ = ["reduce_mean"]


def reduce_mean(value: Tensor) -> Tensor:
    """
    Mean of ``value`` over all workers (sum / world size); the value itself on one worker.

    Args:
        value: a tensor of any shape, same shape on every worker. Not modified; the result is
            detached (normalisers carry no gradient).
    Returns:
        Tensor of the same shape.
    """
    value = value.detach().clone()
    world_size = comm.get_world_size()
    if world_size > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value = value / world_size
    return value
