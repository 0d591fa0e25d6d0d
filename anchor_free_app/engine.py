"""The ``Trainer`` of ``train_net.py`` (also used by the tests and tools): Detectron2's
``DefaultTrainer`` with evaluator dispatch, DDP on CPU workers, exact resume and input checks."""
import contextlib
import logging
import os
import shutil
import tempfile
import weakref
from typing import Optional

import torch

import detectron2.engine.defaults as d2_defaults
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, PascalVOCDetectionEvaluator
from detectron2.solver.build import _generate_optimizer_class_with_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from detectron2.utils.file_io import PathManager

from anchor_free.backbone import compiled_ops_available

from .checkpoint import SafeDetectionCheckpointer, is_local_path, repair_metrics_file, write_file
from .data.checks import check_training_data

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


def _create_ddp_model_cpu_safe(model, *, fp16_compression: bool = False, **kwargs):
    """Detectron2's ``create_ddp_model`` passes ``device_ids=[local_rank]``, which torch's DDP
    rejects for CPU modules (detectron2/engine/defaults.py, the same on v0.6 and main; see
    docs/design.md); CPU models get ``device_ids=None``."""
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).device.type == "cuda":
        return _D2_CREATE_DDP_MODEL(model, fp16_compression=fp16_compression, **kwargs)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=None, **kwargs)


_D2_CREATE_DDP_MODEL = d2_defaults.create_ddp_model


@contextlib.contextmanager
def _cpu_safe_ddp():
    d2_defaults.create_ddp_model = _create_ddp_model_cpu_safe
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = _D2_CREATE_DDP_MODEL


class _TensorboardToStorage(TensorboardXWriter):
    """
    Detectron2's ``TensorboardXWriter`` for an ``OUTPUT_DIR`` that is not on the local file
    system: torch's ``SummaryWriter`` writes local files only, so the event files are written in
    a local temporary folder and copied into ``output_dir`` through ``PathManager`` after each
    write (every 20 iterations) and when training ends.
    """

    def __init__(self, output_dir: str, **kwargs):
        self._output_dir = output_dir
        self._local_dir = tempfile.mkdtemp(prefix="tensorboard-")
        super().__init__(self._local_dir, **kwargs)

    def write(self):
        super().write()
        self._writer.flush()
        self._upload()

    def close(self):
        super().close()
        self._upload()
        shutil.rmtree(self._local_dir, ignore_errors=True)

    def _upload(self) -> None:
        for folder, _, files in os.walk(self._local_dir):
            for name in files:
                local = os.path.join(folder, name)
                target = os.path.join(self._output_dir, os.path.relpath(local, self._local_dir))
                with open(local, "rb") as src:
                    write_file(target, lambda dst: shutil.copyfileobj(src, dst))


# Detectron2 main saves the optimizer (and AMP grad scaler) state under "_trainer"; v0.6 did not.
_D2_SAVES_TRAINER_STATE = "state_dict" in DefaultTrainer.__dict__


class Trainer(DefaultTrainer):
    """
    ``DefaultTrainer`` plus: COCO / Pascal VOC evaluator chosen by the dataset's
    ``evaluator_type``; DDP on CPU workers; the optimizer state in checkpoints on Detectron2
    v0.6 too (main's ``DefaultTrainer.state_dict`` saves it under ``_trainer``; v0.6's did not,
    see docs/design.md); checkpoints and
    ``last_checkpoint`` written atomically and ``metrics.json`` repaired on ``--resume``, so a
    killed run always resumes; ``OUTPUT_DIR`` on any storage Detectron2's ``PathManager`` has a
    handler for; training data checked before the first iteration.
    """

    def __init__(self, cfg: CfgNode):
        with _cpu_safe_ddp():
            super().__init__(cfg)

    def build_hooks(self):
        # DefaultTrainer.__init__ made a plain DetectionCheckpointer just before this call; the
        # checkpoint hook built below must use the atomic one.
        self.checkpointer = SafeDetectionCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        return super().build_hooks()

    def build_writers(self):
        """Detectron2's writers; on an ``OUTPUT_DIR`` that is not local, the tensorboard events
        are written locally and copied there (:class:`_TensorboardToStorage`)."""
        output_dir = self.cfg.OUTPUT_DIR
        if is_local_path(output_dir):
            return super().build_writers()
        # Detectron2's default_writers, but its TensorboardXWriter would fail on the URI
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(output_dir, "metrics.json")),
            _TensorboardToStorage(output_dir),
        ]

    def resume_or_load(self, resume: bool = True):
        super().resume_or_load(resume=resume)
        if resume and comm.is_main_process():
            path = os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")
            if repair_metrics_file(path, self.start_iter):
                self._reopen_metrics_writers(path)

    def _reopen_metrics_writers(self, path: str) -> None:
        # Detectron2's JSONWriter opened metrics.json (append) when the hooks were built, before
        # the resume; the repaired file is a new one, which its stream would not see.
        for hook in self._hooks:
            for writer in getattr(hook, "_writers", ()):
                if isinstance(writer, JSONWriter):
                    writer._file_handle.close()
                    writer._file_handle = PathManager.open(path, "a")

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """Detectron2's optimizer; ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"`` clips the
        global norm over all parameters (mmdet's ``grad_clip``, which both releases use), a type
        Detectron2's yacs path lacks (it clips per parameter)."""
        clip = cfg.SOLVER.CLIP_GRADIENTS
        if not (clip.ENABLED and clip.CLIP_TYPE == "full_model"):
            return super().build_optimizer(cfg, model)
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
        optimizer = super().build_optimizer(cfg, model)
        max_norm, norm_type = clip.CLIP_VALUE, clip.NORM_TYPE

        def clip_full_model(params):
            torch.nn.utils.clip_grad_norm_(list(params), max_norm, norm_type)

        optimizer.__class__ = _generate_optimizer_class_with_gradient_clipping(
            type(optimizer), global_clipper=clip_full_model
        )
        return optimizer

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
            if cfg.MODEL.KEYPOINT_ON
            else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        if cfg.DATALOADER.CHECK_INPUTS:  # once, on the main process; all get its verdict
            check_training_data(dataset, cfg)
        return build_detection_train_loader(cfg, dataset=dataset)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type == "coco":
            # The fast evaluator is a compiled op; pycocotools gives the same AP.
            return COCOEvaluator(
                dataset_name,
                tasks=("bbox",),
                output_dir=output_folder,
                use_fast_impl=compiled_ops_available(),
            )
        if evaluator_type == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        raise ValueError(
            f"No evaluator for dataset {dataset_name!r} (evaluator_type={evaluator_type!r}); "
            "expected a COCO-format ('coco') or Pascal VOC ('pascal_voc') dataset."
        )

    def state_dict(self):
        ret = super().state_dict()
        if not _D2_SAVES_TRAINER_STATE:
            ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if not _D2_SAVES_TRAINER_STATE and "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
