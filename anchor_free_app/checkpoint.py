"""A ``DetectionCheckpointer`` that a killed process cannot leave half-written, that writes
through Detectron2's ``PathManager`` (so ``OUTPUT_DIR`` may be on any storage it has a handler
for), and that can refuse a checkpoint which does not match the model instead of loading half of
it."""
import json
import logging
import os
from typing import IO, Any, Callable

import torch
from iopath.common.file_io import NativePathHandler

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

__all__ = [
    "SafeDetectionCheckpointer",
    "CheckpointMismatchError",
    "is_local_path",
    "repair_metrics_file",
    "write_file",
]

logger = logging.getLogger(__name__)


class CheckpointMismatchError(RuntimeError):
    pass


def is_local_path(path: str) -> bool:
    """Whether Detectron2's ``PathManager`` serves ``path`` from the local file system (iopath's
    ``NativePathHandler``), where a rename is atomic, rather than through a registered handler
    (``s3://``, ``gs://``, ``manifold://``, ...)."""
    # iopath's PathManager picks the handler with this (private) method for every operation; its
    # fallback for a path no registered prefix matches is the native handler.
    find_handler = getattr(PathManager, "_PathManager__get_path_handler", None)
    if find_handler is None:  # pragma: no cover - other iopath versions
        return "://" not in path
    return isinstance(find_handler(path), NativePathHandler)


def write_file(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    """
    Write the file ``path`` with ``write(f)`` (``f`` a binary stream). On the local file system
    atomically: into a temporary file of the same folder, ``fsync``, ``os.replace``, so a reader
    (or a ``--resume`` after a kill) sees the old or the new file, never half of one. Elsewhere
    through ``PathManager.open(path, "wb")``, as atomic as the handler makes it (object stores
    typically publish an object when its stream is closed, which a killed writer never does).
    """
    if not is_local_path(path):
        with PathManager.open(path, "wb") as f:
            write(f)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX
    finally:
        if os.path.exists(tmp):  # write() raised: the old file stays as it was
            os.remove(tmp)


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """
    Like ``DetectionCheckpointer``, plus:

    - checkpoints and ``last_checkpoint`` are written by :func:`write_file`: on a local disk to a
      temporary file then renamed, so a kill at any moment leaves the previous complete
      checkpoint as the one ``--resume`` finds; on other storage through ``PathManager``;
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
        write_file(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        write_file(save_file, lambda f: f.write(last_filename_basename.encode()))

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


def repair_metrics_file(path: str, resume_iter: int) -> bool:
    """
    Make Detectron2's ``metrics.json`` (one JSON object per line) consistent before resuming at
    ``resume_iter``: drop a trailing line cut by a kill, and the lines of iterations at or after
    ``resume_iter`` (they will be run and logged again). Return whether the file was rewritten
    (then a stream open on the old file must be reopened).
    """
    if not PathManager.isfile(path):
        return False
    with PathManager.open(path, "r") as f:
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
    if len(kept) == len(lines):
        return False
    write_file(path, lambda f: f.write("".join(x + "\n" for x in kept).encode()))
    return True
