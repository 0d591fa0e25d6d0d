"""
What the Python demo configs share (the twins of the ``*_demo.yaml`` configs): the built-in
dataset (``anchor_free_app/data/demo_shapes.py``: 2000 / 100 generated images of 128 x 128, 4
classes, batches of 8) and the small R-18 FPN trained from scratch.
"""
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T


def use_demo_shapes(dataloader) -> None:
    """Train on ``demo_shapes_train`` and evaluate on ``demo_shapes_val`` at their 128 px."""
    dataloader.demo_shapes = dict(seed=0, num_train=2000, num_val=100, image_size=128)
    dataloader.train.dataset.names = "demo_shapes_train"
    dataloader.test.dataset.names = "demo_shapes_val"
    dataloader.train.mapper.augmentations = [
        L(T.ResizeShortestEdge)(short_edge_length=(128,), sample_style="choice", max_size=128),
        L(T.RandomFlip)(horizontal=True),
    ]
    dataloader.test.mapper.augmentations = [
        L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128)
    ]
    dataloader.train.total_batch_size = 8
    dataloader.train.num_workers = 1
    dataloader.test.num_workers = 1


def use_r18_from_scratch(model, *, p6_in_channels: int) -> None:
    """R-18 with trainable BN, nothing frozen, a 64-channel FPN (P6 from a feature of
    ``p6_in_channels``), unit-variance inputs, the 4 demo classes."""
    stages = model.backbone.bottom_up.stages
    stages.depth = 18
    del stages.stride_in_1x1  # a bottleneck setting: R-18 has none
    stages.norm = "BN"
    model.backbone.bottom_up.stem.norm = "BN"
    model.backbone.bottom_up.freeze_at = 0
    model.backbone.out_channels = 64
    model.backbone.top_block.in_channels = p6_in_channels
    model.num_classes = 4
    model.pixel_mean = [103.530, 116.280, 123.675]
    model.pixel_std = [57.375, 57.120, 58.395]
