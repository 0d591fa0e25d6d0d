"""The project config and how a run's config is made: Detectron2's defaults, both detectors'
keys and the application's keys (input checks, the built-in dataset), then a config file and
``KEY VALUE`` overrides."""
import logging
import os
from typing import Sequence

from detectron2.config import CfgNode
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .data import register_demo_shapes_from_cfg
from .device import check_device as check_model_device

__all__ = ["add_app_config", "get_project_cfg", "setup_cfg"]

logger = logging.getLogger(__name__)


def add_app_config(cfg: CN) -> None:
    """Add the application's keys (not read by any model) to ``cfg`` in place. Safe to call twice."""
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
