# AutoAssign on the built-in demo dataset (generated shapes, 4 classes, 128 x 128 images), from
# scratch on a small R-18 FPN: the Python-config twin of autoassign_R_18_FPN_demo.yaml (same
# data, schedule and seed as the other demo configs).
# python train_net.py --config-file configs/AutoAssign/autoassign_R_18_FPN_demo.py train.device=cpu
import torch

from detectron2.config import LazyCall as L
from detectron2.data import transforms as T

from anchor_free_app.engine import full_model_clipped_optimizer

from .autoassign_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

# R-18, trainable BN, nothing frozen, 64-channel FPN, 2 convs per tower (no pretrained weights).
model.backbone.bottom_up.stages.depth = 18
del model.backbone.bottom_up.stages.stride_in_1x1  # a bottleneck setting: R-18 has none
model.backbone.bottom_up.stages.norm = "BN"
model.backbone.bottom_up.stem.norm = "BN"
model.backbone.bottom_up.freeze_at = 0
model.backbone.out_channels = 64
model.backbone.top_block.in_channels = 512  # P6 from C5 (res5 of R-18: 512 channels)
model.head.input_shape = [{"channels": 64}] * 5
model.head.num_convs = 2
model.num_classes = 4
model.pixel_mean = [103.530, 116.280, 123.675]
model.pixel_std = [57.375, 57.120, 58.395]  # from scratch: unit-variance inputs
train.init_checkpoint = ""  # trained from scratch: no download needed

dataloader.demo_shapes = dict(seed=0, num_train=2000, num_val=100, image_size=128)
dataloader.train.dataset.names = "demo_shapes_train"
dataloader.test.dataset.names = "demo_shapes_val"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(128,), sample_style="choice", max_size=128),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128)]
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 1
dataloader.test.num_workers = 1

# Training from scratch: the global gradient norm clipped at 10 keeps early steps bounded.
optimizer._target_ = full_model_clipped_optimizer
optimizer.optimizer_class = torch.optim.SGD
optimizer.clip_value = 10.0
optimizer.norm_type = 2.0
optimizer.lr = 0.03
train.max_iter = 1500
lr_multiplier.scheduler.milestones = [1000, 1300, 1500]
lr_multiplier.warmup_length = 100 / 1500
train.checkpointer.period = 500
train.eval_period = 0
train.seed = 42
train.output_dir = "output/demo_autoassign"
