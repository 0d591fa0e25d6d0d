"""Let mmdetection import and run a dense detector's forward pass on the CPU without mmcv's
compiled operators (mmcv-lite 2.x, or mmcv-full 1.x built with ``MMCV_WITH_OPS=0``).

``mmcv.ops`` loads every kernel from the extension module ``mmcv._ext`` at import time
(``mmcv/utils/ext_loader.py``, ``load_ext``), and mmdetection imports ``mmcv.ops`` from many
modules, so without the extension ``import mmdet.models`` fails. :func:`install` registers a
stand-in ``mmcv._ext`` before that import: its ``nms`` is torchvision's (same greedy NMS,
suppression at IoU > threshold, boxes without the +1 offset; mmcv's Python ``nms`` /
``batched_nms`` wrappers around it run unchanged), every other kernel raises an error naming
itself if called. Pseudo-IoU's and AutoAssign's inference call no other kernel (the DCN model
of Pseudo-IoU would: it is not covered).
"""
import sys
import types

import torch
import torchvision

__all__ = ["install"]


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0):
    if offset != 0:
        raise NotImplementedError("mmcv nms with offset=1 (legacy boxes) is not emulated")
    return torchvision.ops.nms(boxes.float(), scores.float(), float(iou_threshold))


def _missing(name: str):
    def kernel(*args, **kwargs):
        raise NotImplementedError(
            f"mmcv compiled op {name!r} is not available (mmcv without ops; "
            "tools/parity/mmcv_ext_stub.py emulates only nms)"
        )

    return kernel


def install() -> None:
    """Register the stand-in ``mmcv._ext`` (call before importing mmcv.ops / mmdet)."""
    if "mmcv._ext" in sys.modules:
        return
    module = types.ModuleType("mmcv._ext")
    module.nms = _nms

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _missing(name)

    module.__getattr__ = __getattr__
    sys.modules["mmcv._ext"] = module
