"""Config keys shared by both detectors (added by ``add_pseudo_iou_config`` and
``add_autoassign_config``)."""
from detectron2.config import CfgNode as CN

__all__ = ["add_anchor_free_config"]


def add_anchor_free_config(cfg: CN) -> None:
    """Add the keys both detectors share to ``cfg`` in place. Safe to call twice."""
    # Input of the P6/P7 top block of "build_anchor_free_resnet_fpn_backbone": "p5" (FCOS and
    # Pseudo-IoU release, mmdet extra_convs_on_inputs=False) or "res5" (RetinaNet and AutoAssign
    # release, P6 = conv on C5).
    if "TOP_BLOCK_IN_FEATURE" not in cfg.MODEL.FPN:
        cfg.MODEL.FPN.TOP_BLOCK_IN_FEATURE = "p5"
    if "CHECK_INPUTS" not in cfg.DATALOADER:
        # Check every training record before the first iteration: image file present and
        # readable (header), size as annotated, boxes finite with non-negative size.
        cfg.DATALOADER.CHECK_INPUTS = True
    if "DEMO_SHAPES" not in cfg.DATASETS:
        # The built-in generated dataset (anchor_free/data/demo_shapes.py).
        cfg.DATASETS.DEMO_SHAPES = CN()
        # Seed of the generator; different seeds give different datasets (and cache folders).
        cfg.DATASETS.DEMO_SHAPES.SEED = 0
        # Number of images in the train / val split.
        cfg.DATASETS.DEMO_SHAPES.NUM_TRAIN = 2000
        cfg.DATASETS.DEMO_SHAPES.NUM_VAL = 100
        # Image side in pixels (images are square).
        cfg.DATASETS.DEMO_SHAPES.IMAGE_SIZE = 128
