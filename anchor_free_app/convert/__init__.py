"""Converters from the published checkpoints of the two methods to Detectron2 checkpoints of
this project's models (``.pth`` with ``"model"``, loadable by ``train_net.py --eval-only`` with
the strict loader).

Sources (:data:`SOURCES`): ``mmdet2-pseudo-iou`` (the Pseudo-IoU authors' mmdetection 2.11
checkpoints), ``mmdet3-autoassign`` (mmdetection 3.x's AutoAssign) and ``cvpods-autoassign``
(the AutoAssign authors' cvpods checkpoint). Command line: ``python tools/convert_checkpoint.py``
(or ``python -m anchor_free_app.convert``). Each source has its config under ``configs/``
(``*_mmdet*.yaml``, ``*_cvpods.yaml``) that rebuilds the source model exactly.
"""
from .api import convert_state_dict, convert_checkpoint, load_source_checkpoint
from .formats import SOURCES, detect_source
from .mapping import CheckpointLayoutError

__all__ = [
    "SOURCES",
    "CheckpointLayoutError",
    "convert_checkpoint",
    "convert_state_dict",
    "detect_source",
    "load_source_checkpoint",
]
