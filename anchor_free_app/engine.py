"""The trainers of ``train_net.py`` (also used by the tests and tools): :class:`Trainer`,
Detectron2's ``DefaultTrainer`` for yacs configs with evaluator dispatch, DDP on CPU workers, atomic checkpoints,
exact resume and input checks; :class:`PythonConfigTrainer`, the same trainer for Python
(LazyConfig) configs, built as Detectron2's ``tools/lazyconfig_train_net.py`` builds its run."""
import contextlib
import logging
import os
import shutil
import tempfile
import weakref
from typing import Any, Dict, Optional, Type

import torch
from omegaconf import DictConfig

import detectron2.engine.defaults as d2_defaults
from detectron2.config import CfgNode, instantiate
from detectron2.data import (
    MetadataCatalog,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.evaluation import (
    COCOEvaluator,
    DatasetEvaluator,
    PascalVOCDetectionEvaluator,
    inference_on_dataset,
    print_csv_format,
)
from detectron2.solver import LRMultiplier
from detectron2.solver.build import _generate_optimizer_class_with_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from detectron2.utils.file_io import PathManager
from detectron2.utils.registry import locate

from anchor_free.backbone import compiled_ops_available

from .checkpoint import SafeDetectionCheckpointer, is_local_path, repair_metrics_file, write_file
from .config import build_model_from_config, run_settings
from .data.checks import check_training_data

__all__ = ["PythonConfigTrainer", "Trainer", "build_evaluator", "full_model_clipped_optimizer"]

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


def build_evaluator(dataset_name: str, output_dir: Optional[str] = None) -> DatasetEvaluator:
    """
    The evaluator of ``dataset_name`` by its ``evaluator_type``: Detectron2's COCO evaluator
    (boxes; its fast C++ ``COCOeval`` where the compiled ops are, pycocotools' otherwise, same AP)
    or its Pascal VOC evaluator. Python configs use it as ``dataloader.evaluator``.
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "coco":
        return COCOEvaluator(
            dataset_name,
            tasks=("bbox",),
            output_dir=output_dir,
            use_fast_impl=compiled_ops_available(),
        )
    if evaluator_type == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    raise ValueError(
        f"No evaluator for dataset {dataset_name!r} (evaluator_type={evaluator_type!r}); "
        "expected a COCO-format ('coco') or Pascal VOC ('pascal_voc') dataset."
    )


def full_model_clipped_optimizer(
    optimizer_class: Type[torch.optim.Optimizer],
    *,
    clip_value: float,
    norm_type: float = 2.0,
    **optimizer_kwargs: Any,
) -> torch.optim.Optimizer:
    """
    ``optimizer_class(**optimizer_kwargs)`` whose ``step`` first clips the global gradient norm
    over all its parameters to ``clip_value`` (mmdet's ``grad_clip``, which both releases use;
    yacs: ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"``, a type Detectron2's yacs path lacks:
    it clips per parameter). In a Python config it keeps Detectron2's ``optimizer.params``
    convention: ``L(full_model_clipped_optimizer)(optimizer_class=torch.optim.SGD, params=...,
    lr=..., clip_value=35.0)``.
    """
    return _clip_full_model(optimizer_class(**optimizer_kwargs), clip_value, norm_type)


def _clip_full_model(
    optimizer: torch.optim.Optimizer, clip_value: float, norm_type: float
) -> torch.optim.Optimizer:
    def clip_full_model(params):
        torch.nn.utils.clip_grad_norm_(list(params), clip_value, norm_type)

    optimizer.__class__ = _generate_optimizer_class_with_gradient_clipping(
        type(optimizer), global_clipper=clip_full_model
    )
    return optimizer


def seeded_training_sampler(size: int, seed: int) -> TrainingSampler:
    """
    Detectron2's ``TrainingSampler`` seeded with the config's seed (``SEED`` / ``train.seed``;
    negative: drawn at random), as Detectron2 main's yacs loader seeds it. Both front ends use
    it on both Detectron2 routes, so a run's image order depends on the seed alone (v0.6's yacs
    loader and both versions' ``lazyconfig_train_net`` draw it from the global random state).
    """
    return TrainingSampler(size, seed=seed if seed >= 0 else None)


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
        self.settings = run_settings(cfg)
        with _cpu_safe_ddp():
            super().__init__(cfg)

    def build_hooks(self):
        # DefaultTrainer.__init__ made a plain DetectionCheckpointer just before this call; the
        # checkpoint hook built below must use the atomic one.
        self.checkpointer = SafeDetectionCheckpointer(
            self.checkpointer.model, self.settings.output_dir, trainer=weakref.proxy(self)
        )
        return super().build_hooks()

    def build_writers(self):
        """Detectron2's writers; on an output folder that is not local, the tensorboard events
        are written locally and copied there (:class:`_TensorboardToStorage`)."""
        output_dir = self.settings.output_dir
        if is_local_path(output_dir):
            return d2_defaults.default_writers(output_dir, self.max_iter)
        # Detectron2's default_writers, but its TensorboardXWriter would fail on the URI
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(output_dir, "metrics.json")),
            _TensorboardToStorage(output_dir),
        ]

    def resume_or_load(self, resume: bool = True):
        """``DefaultTrainer.resume_or_load`` for either config (``MODEL.WEIGHTS`` or
        ``train.init_checkpoint``), then ``metrics.json`` cut back to the resumed iteration."""
        self.checkpointer.resume_or_load(self.settings.weights, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            # The checkpoint stores the iteration that just finished: start at the next one.
            self.start_iter = self.iter + 1
        if resume and comm.is_main_process():
            path = os.path.join(self.settings.output_dir, "metrics.json")
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
        global norm over all parameters (:func:`full_model_clipped_optimizer`)."""
        clip = cfg.SOLVER.CLIP_GRADIENTS
        if not (clip.ENABLED and clip.CLIP_TYPE == "full_model"):
            return super().build_optimizer(cfg, model)
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
        optimizer = super().build_optimizer(cfg, model)
        return _clip_full_model(optimizer, clip.CLIP_VALUE, clip.NORM_TYPE)

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
            check_training_data(dataset, run_settings(cfg))
        sampler = None
        if cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler":
            sampler = seeded_training_sampler(len(dataset), cfg.SEED)
        return build_detection_train_loader(cfg, dataset=dataset, sampler=sampler)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluator:
        return build_evaluator(
            dataset_name, output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
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


class PythonConfigTrainer(Trainer):
    """
    :class:`Trainer` for Python (LazyConfig) configs: the run of Detectron2's
    ``tools/lazyconfig_train_net.py`` (``instantiate`` of ``model``, ``optimizer`` with
    ``optimizer.params.model``, ``dataloader.train``, ``lr_multiplier``; ``train.amp.enabled``,
    ``train.ddp``, ``train.checkpointer``, ``train.eval_period``, ``train.log_period``,
    ``train.max_iter``, ``train.output_dir``, ``train.init_checkpoint``) with everything the yacs
    :class:`Trainer` adds, from the same code: the training data checked before the first
    iteration (``dataloader.check_inputs``, ``dataloader.check_image_files``), DDP on CPU
    workers, atomic checkpoints on any ``PathManager`` storage, the optimizer state in
    checkpoints on Detectron2 v0.6 too, and ``metrics.json`` repaired on ``--resume``.
    """

    def __init__(self, cfg: DictConfig):
        TrainerBase.__init__(self)
        self.cfg = cfg
        self.settings = run_settings(cfg)
        model = self.build_model(cfg)
        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)
        data_loader = self.build_train_loader(cfg)
        model = _create_ddp_model_cpu_safe(model, **cfg.train.ddp)
        trainer_class = AMPTrainer if cfg.train.amp.enabled else SimpleTrainer
        self._trainer = trainer_class(model, data_loader, optimizer)
        self.max_iter = cfg.train.max_iter
        self.scheduler = LRMultiplier(
            optimizer, multiplier=instantiate(cfg.lr_multiplier), max_iter=self.max_iter
        )
        self.checkpointer = SafeDetectionCheckpointer(
            model, self.settings.output_dir, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        train = self.cfg.train
        is_main = comm.is_main_process()

        def test_and_save_results():
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        return [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            hooks.PeriodicCheckpointer(self.checkpointer, **train.checkpointer)
            if is_main
            else None,
            hooks.EvalHook(train.eval_period, test_and_save_results),
            hooks.PeriodicWriter(self.build_writers(), period=train.log_period)
            if is_main
            else None,
        ]

    def train(self) -> Optional[Dict]:
        TrainerBase.train(self, self.start_iter, self.max_iter)
        return getattr(self, "_last_eval_results", None)

    @classmethod
    def build_model(cls, cfg: DictConfig) -> torch.nn.Module:
        model = build_model_from_config(cfg)
        logging.getLogger("detectron2").info(f"Model:\n{model}")
        return model

    @classmethod
    def build_train_loader(cls, cfg: DictConfig):
        """``dataloader.train`` with its dataset instantiated first and checked."""
        loader = cfg.dataloader.train
        dataset = instantiate(loader.dataset)
        settings = run_settings(cfg)
        if settings.check_inputs:  # once, on the main process; all get its verdict
            check_training_data(dataset, settings)
        build = loader._target_ if callable(loader._target_) else locate(loader._target_)
        kwargs = {k: instantiate(loader[k]) for k in loader if k not in ("_target_", "dataset")}
        if kwargs.get("sampler") is None:
            kwargs["sampler"] = seeded_training_sampler(len(dataset), cfg.train.seed)
        return build(dataset=dataset, **kwargs)

    @classmethod
    def test(cls, cfg: DictConfig, model: torch.nn.Module, evaluators=None) -> Dict:
        """``dataloader.test`` evaluated by ``dataloader.evaluator`` (``lazyconfig_train_net``'s
        ``do_test``); {} without an evaluator (``dataloader.evaluator=None``)."""
        if cfg.dataloader.get("evaluator") is None:
            return {}
        results = inference_on_dataset(
            model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
        )
        if comm.is_main_process():
            print_csv_format(results)
        return results
