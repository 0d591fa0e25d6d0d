"""How a run's config is made, in either of Detectron2's config systems:

- yacs (``.yaml``): Detectron2's defaults, both detectors' keys and the application's keys (input
  checks, the built-in dataset), then the file and ``KEY VALUE`` overrides (:func:`setup_cfg`);
- Python / LazyConfig (``.py``, Detectron2 main's ``configs/common`` style, the five names
  ``model``, ``dataloader``, ``optimizer``, ``lr_multiplier``, ``train``), then ``path.key=value``
  overrides (:func:`setup_python_cfg`).

:func:`load_config` takes either; :class:`RunSettings` is what the application (training, demo,
export, the assignment report) reads of a config, whichever system it is written in.
"""
import dataclasses
import logging
import os
from typing import Any, Optional, Sequence, Tuple, Union

from omegaconf import DictConfig

from detectron2.config import CfgNode
from detectron2.config import CfgNode as CN
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from .data import register_demo_shapes, register_demo_shapes_from_cfg
from .device import PYTHON_DEVICE_KEY, YACS_DEVICE_KEY
from .device import check_device as check_model_device

__all__ = [
    "AnyConfig",
    "RunSettings",
    "add_app_config",
    "build_model_from_config",
    "get_project_cfg",
    "is_python_config",
    "load_config",
    "run_settings",
    "setup_cfg",
    "set_device",
    "setup_python_cfg",
]

AnyConfig = Union[CfgNode, DictConfig]
# The sections of a Python config (Detectron2's configs/COCO-Detection/fcos_R_50_FPN_1x.py).
PYTHON_CONFIG_SECTIONS = ("model", "dataloader", "optimizer", "lr_multiplier", "train")
# The application's keys of a Python config with their defaults (yacs: add_app_config).
PYTHON_APP_DEFAULTS = {
    "dataloader.check_inputs": True,  # DATALOADER.CHECK_INPUTS
    "dataloader.check_image_files": 1000,  # DATALOADER.CHECK_IMAGE_FILES
    "train.seed": -1,  # SEED
}

logger = logging.getLogger(__name__)


def add_app_config(cfg: CN) -> None:
    """Add the application's keys (read by no model) to ``cfg`` in place. Safe to call twice."""
    if "CHECK_INPUTS" not in cfg.DATALOADER:
        # Check the training data once, on the main process, before the first iteration
        # (anchor_free_app/data/checks.py): every record has a file_name and every non-crowd
        # box is well-formed, finite, with non-negative width and height (all records,
        # vectorised: 1-2 s for COCO train2017); plus CHECK_IMAGE_FILES image files.
        cfg.DATALOADER.CHECK_INPUTS = True
    if "CHECK_IMAGE_FILES" not in cfg.DATALOADER:
        # How many training image files CHECK_INPUTS opens (header only, through PathManager),
        # spread evenly over the dataset: present, readable, of the annotated size after EXIF
        # orientation, of a mode that converts to INPUT.FORMAT. -1: all (opt-in: COCO's 117k
        # files take 10-20 s from the page cache, longer from remote storage); 0: none.
        cfg.DATALOADER.CHECK_IMAGE_FILES = 1000
    if "DEMO_SHAPES" not in cfg.DATASETS:
        # The built-in generated dataset (anchor_free_app/data/demo_shapes.py).
        cfg.DATASETS.DEMO_SHAPES = CN()
        # Seed of the generator; different seeds give different datasets (and cache folders).
        cfg.DATASETS.DEMO_SHAPES.SEED = 0
        # Number of images in the train / val split.
        cfg.DATASETS.DEMO_SHAPES.NUM_TRAIN = 2000
        cfg.DATASETS.DEMO_SHAPES.NUM_VAL = 100
        # Image side in pixels (images are square).
        cfg.DATASETS.DEMO_SHAPES.IMAGE_SIZE = 128


def get_project_cfg() -> CfgNode:
    """Detectron2's defaults plus the keys of both detectors (``MODEL.PSEUDO_IOU``,
    ``MODEL.AUTOASSIGN`` and the shared ones); importing the packages registers the models."""
    from autoassign import add_autoassign_config
    from pseudo_iou import add_pseudo_iou_config

    cfg = get_cfg()
    add_pseudo_iou_config(cfg)
    add_autoassign_config(cfg)
    add_app_config(cfg)
    return cfg


def setup_cfg(
    config_file: str,
    opts: Sequence[str] = (),
    freeze: bool = True,
    check_device: bool = True,
) -> CfgNode:
    """
    Load ``config_file`` and ``KEY VALUE`` overrides onto the project config, check that
    ``MODEL.DEVICE`` is there (a CUDA device without CUDA is a
    :class:`~anchor_free_app.device.DeviceError` saying to pass ``MODEL.DEVICE cpu``; nothing
    falls back to the CPU silently; ``check_device=False`` for tools that run no model), and
    register the built-in demo dataset if the config uses it.
    """
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file not found: {config_file}")
    cfg = get_project_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if check_device:
        check_model_device(cfg.MODEL.DEVICE)
    register_demo_shapes_from_cfg(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def is_python_config(config_file: str) -> bool:
    """A Python (LazyConfig) config file, by its extension, as Detectron2's ``LazyConfig.load``."""
    return config_file.endswith(".py")


def setup_python_cfg(
    config_file: str, opts: Sequence[str] = (), check_device: bool = True
) -> DictConfig:
    """
    Load a Python config and ``path.key=value`` overrides (``LazyConfig.apply_overrides``), add
    the application's keys it lacks (:data:`PYTHON_APP_DEFAULTS`), check its sections and
    ``train.device`` as :func:`setup_cfg` checks ``MODEL.DEVICE`` (``check_device=False`` for
    tools that run no model), and register the built-in demo dataset if it uses it
    (settings: ``dataloader.demo_shapes``, the keys of ``DATASETS.DEMO_SHAPES`` in lower case).
    """
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file not found: {config_file}")
    cfg = LazyConfig.load(config_file)
    cfg = LazyConfig.apply_overrides(cfg, list(opts))
    missing = [name for name in PYTHON_CONFIG_SECTIONS if name not in cfg]
    if missing:
        raise ValueError(
            f"{config_file} defines no {missing}: a Python config defines "
            f"{list(PYTHON_CONFIG_SECTIONS)} (Detectron2's configs/common/ files give them)"
        )
    for path, default in PYTHON_APP_DEFAULTS.items():
        section, key = path.split(".")
        if key not in cfg[section]:
            cfg[section][key] = default
    if check_device:
        check_model_device(cfg.train.device, PYTHON_DEVICE_KEY)
    settings = run_settings(cfg)
    if any(n.startswith("demo_shapes_") for n in settings.train_datasets + settings.test_datasets):
        demo = cfg.dataloader.get("demo_shapes", {})
        register_demo_shapes(**{k: demo[k] for k in demo})
    return cfg


def load_config(
    config_file: str, opts: Sequence[str] = (), *, freeze: bool = True, check_device: bool = True
) -> AnyConfig:
    """:func:`setup_python_cfg` for a ``.py`` file, else :func:`setup_cfg` (yacs)."""
    if is_python_config(config_file):
        return setup_python_cfg(config_file, opts, check_device=check_device)
    return setup_cfg(config_file, opts, freeze=freeze, check_device=check_device)


def set_device(cfg: AnyConfig, device: str) -> None:
    """Set the run's device (``MODEL.DEVICE`` / ``train.device``) in place (a frozen yacs
    config stays frozen)."""
    if isinstance(cfg, CfgNode):
        frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.MODEL.DEVICE = device
        if frozen:
            cfg.freeze()
    else:
        cfg.train.device = device


def build_model_from_config(cfg: AnyConfig):
    """The model of either config, on its device (``MODEL.DEVICE`` / ``train.device``), with
    random weights (load them with a checkpointer)."""
    if isinstance(cfg, CfgNode):
        return build_model(cfg)
    return instantiate(cfg.model).to(cfg.train.device)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What the application reads of a config, with the name of each setting in its system."""

    config_system: str  # "yacs" or "python"
    meta_architecture: str  # the model's class name: "PseudoIoU", "AutoAssign", "RetinaNet", ...
    device: str
    device_key: str  # "MODEL.DEVICE" or "train.device"
    weights: str  # MODEL.WEIGHTS or train.init_checkpoint ("" for none)
    output_dir: str
    train_datasets: Tuple[str, ...]
    test_datasets: Tuple[str, ...]
    input_format: str
    train_min_sizes: Tuple[int, ...]  # short sides of the training resize (all, or the range)
    train_max_size: int
    test_min_size: int
    test_max_size: int
    num_classes: Optional[int]
    num_classes_key: str
    check_inputs: bool
    check_image_files: int


# The yacs node of the number of classes, per meta-architecture; another one's classes are not
# known (the data check then checks the ids' presence and type only).
_NUM_CLASSES_NODES = {
    "PseudoIoU": "PSEUDO_IOU",
    "AutoAssign": "AUTOASSIGN",
    "RetinaNet": "RETINANET",
    "GeneralizedRCNN": "ROI_HEADS",
}


def run_settings(cfg: AnyConfig) -> RunSettings:
    """The :class:`RunSettings` of a yacs config (``CfgNode``) or a Python config."""
    if isinstance(cfg, CfgNode):
        return _yacs_settings(cfg)
    return _python_settings(cfg)


def _yacs_settings(cfg: CfgNode) -> RunSettings:
    arch = cfg.MODEL.META_ARCHITECTURE
    node = _NUM_CLASSES_NODES.get(arch)
    return RunSettings(
        config_system="yacs",
        meta_architecture=arch,
        device=cfg.MODEL.DEVICE,
        device_key=YACS_DEVICE_KEY,
        weights=cfg.MODEL.WEIGHTS,
        output_dir=cfg.OUTPUT_DIR,
        train_datasets=tuple(cfg.DATASETS.TRAIN),
        test_datasets=tuple(cfg.DATASETS.TEST),
        input_format=cfg.INPUT.FORMAT,
        train_min_sizes=tuple(int(s) for s in cfg.INPUT.MIN_SIZE_TRAIN),
        train_max_size=int(cfg.INPUT.MAX_SIZE_TRAIN),
        test_min_size=int(cfg.INPUT.MIN_SIZE_TEST),
        test_max_size=int(cfg.INPUT.MAX_SIZE_TEST),
        num_classes=int(cfg.MODEL[node].NUM_CLASSES) if node else None,
        num_classes_key=f"MODEL.{node}.NUM_CLASSES" if node else "NUM_CLASSES",
        check_inputs=bool(cfg.DATALOADER.CHECK_INPUTS),
        check_image_files=int(cfg.DATALOADER.CHECK_IMAGE_FILES),
    )


def _names(datasets: Any) -> Tuple[str, ...]:
    names = datasets.names if "names" in datasets else ()
    return (names,) if isinstance(names, str) else tuple(names)


def _resize(mapper: DictConfig, section: str) -> Tuple[Tuple[int, ...], int]:
    """(short sides, max size) of the ``ResizeShortestEdge`` among ``mapper.augmentations``."""
    for aug in mapper.get("augmentations", []):
        if _target_name(aug) == T.ResizeShortestEdge.__name__:
            short = aug.short_edge_length
            short = (short,) if isinstance(short, int) else tuple(short)
            return tuple(int(s) for s in short), int(aug.get("max_size", 2**31 - 1))
    raise ValueError(f"{section}.mapper.augmentations has no ResizeShortestEdge")


def _target_name(node: Any) -> str:
    target = node.get("_target_", "") if isinstance(node, (dict, DictConfig)) else ""
    return target.rsplit(".", 1)[-1] if isinstance(target, str) else target.__name__


def _python_settings(cfg: DictConfig) -> RunSettings:
    train_min, train_max = _resize(cfg.dataloader.train.mapper, "dataloader.train")
    test_min, test_max = _resize(cfg.dataloader.test.mapper, "dataloader.test")
    return RunSettings(
        config_system="python",
        meta_architecture=_target_name(cfg.model),
        device=cfg.train.device,
        device_key=PYTHON_DEVICE_KEY,
        weights=cfg.train.init_checkpoint or "",
        output_dir=cfg.train.output_dir,
        train_datasets=_names(cfg.dataloader.train.dataset),
        test_datasets=_names(cfg.dataloader.test.dataset),
        input_format=cfg.dataloader.train.mapper.image_format,
        train_min_sizes=train_min,
        train_max_size=train_max,
        test_min_size=test_min[0],
        test_max_size=test_max,
        num_classes=cfg.model.get("num_classes"),
        num_classes_key="model.num_classes",
        check_inputs=bool(cfg.dataloader.get("check_inputs", True)),
        check_image_files=int(cfg.dataloader.get("check_image_files", 1000)),
    )
