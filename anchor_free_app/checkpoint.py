"""A ``DetectionCheckpointer`` that a killed process cannot leave half-written, and that can
refuse a checkpoint which does not match the model instead of loading half of it."""
import json
import logging
import os
from typing import Any

import torch

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["SafeDetectionCheckpointer", "CheckpointMismatchError", "repair_metrics_file"]

logger = logging.getLogger(__name__)


class CheckpointMismatchError(RuntimeError):
    pass


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """
    Like ``DetectionCheckpointer``, plus:

    - checkpoints and ``last_checkpoint`` are written to a temporary file and renamed, so a kill
      at any moment leaves the previous complete checkpoint as the one ``--resume`` finds;
    - with ``strict=True``, loading a checkpoint whose parameters don't match the model
      (missing or unexpected keys, wrong shapes: e.g. one trained with another
      ``MODEL.META_ARCHITECTURE``) raises :class:`CheckpointMismatchError` naming them, instead of
      logging a warning and evaluating a half-initialised model. Use it for ``--eval-only``.
    """

    def __init__(self, model, save_dir: str = "", *, strict: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(save_file, lambda f: f.write(last_filename_basename.encode()))

    def _load_model(self, checkpoint: Any):
        incompatible = super()._load_model(checkpoint)
        if self.strict and (
            incompatible.missing_keys
            or incompatible.unexpected_keys
            or incompatible.incorrect_shapes
        ):
            model = self.model.module if hasattr(self.model, "module") else self.model
            parts = []
            for what, keys in (
                ("missing in the checkpoint", incompatible.missing_keys),
                ("unexpected (not in the model)", incompatible.unexpected_keys),
                ("with a different shape", [k for k, *_ in incompatible.incorrect_shapes]),
            ):
                if keys:
                    parts.append(f"{len(keys)} parameters {what}, e.g. {sorted(keys)[:3]}")
            raise CheckpointMismatchError(
                f"The checkpoint does not match the model {type(model).__name__}: "
                + "; ".join(parts)
                + ". Was it trained with another MODEL.META_ARCHITECTURE or config?"
            )
        return incompatible


def repair_metrics_file(path: str, resume_iter: int) -> None:
    """
    Make Detectron2's ``metrics.json`` (one JSON object per line) consistent before resuming at
    ``resume_iter``: drop a trailing line cut by a kill, and the lines of iterations at or after
    ``resume_iter`` (they will be run and logged again).
    """
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.read().splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning(f"{path}: dropping a line that is not complete JSON: {line[:80]!r}")
            continue
        if record.get("iteration", -1) < resume_iter:
            kept.append(line)
    if len(kept) != len(lines):
        _atomic_write(path, lambda f: f.write("".join(x + "\n" for x in kept).encode()))
