# The released R-50 model: 1x (12 epochs), multi-scale 640/800 training, GIoU + centerness, T = 0.4
# (the Python-config twin of pseudo_iou_R_50_FPN_1x.yaml; the release's training:
# SHI-Labs/Pseudo-IoU-for-Anchor-Free-Object-Detection, configs/pseudo-iou/
# piou_r50_caffe_fpn_gn-head_1x_coco.py). Release README: 38.4 AP (val2017).
# python train_net.py --config-file configs/PseudoIoU/pseudo_iou_R_50_FPN_1x.py --num-gpus 8
import torch

from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.model_zoo import get_config

from anchor_free_app.engine import full_model_clipped_optimizer

from ..common.data.coco_detection import dataloader
from ..common.models.pseudo_iou import model

optimizer = get_config("common/optim.py").SGD
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x
train = get_config("common/train.py").train

model.backbone.bottom_up.stages.depth = 50
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.output_dir = "output/pseudo_iou_R_50_FPN_1x"

# Multi-scale training: short side 640 or 800 (mmdet multiscale_mode="value"), flip 0.5.
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(640, 800), sample_style="choice", max_size=1333),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 16  # 4 GPUs x 4 images (paper)

# SGD lr 0.01, GroupNorm weights decay (mmdet norm_decay_mult = 1), biases at 2x lr without decay
# (bias_lr_mult, bias_decay_mult); global gradient norm clipped at 35 (mmdet grad_clip).
optimizer._target_ = full_model_clipped_optimizer
optimizer.optimizer_class = torch.optim.SGD
optimizer.clip_value = 35.0
optimizer.norm_type = 2.0
optimizer.lr = 0.01
optimizer.params.base_lr = "${..lr}"
optimizer.params.weight_decay_norm = 1e-4
optimizer.params.bias_lr_factor = 2.0
optimizer.params.weight_decay_bias = 0.0

# 12 epochs of COCO train2017 (117,266 images with boxes) at 16 images: 7,330 iterations an
# epoch, lr x0.1 after epochs 8 and 11; constant warm-up at lr / 3 for 500 iterations.
train.max_iter = 87960
# Milestones in iterations of the full schedule, whose last is its length (Detectron2's
# coco_schedule.py): the schedule scales with train.max_iter.
lr_multiplier.scheduler.milestones = [58640, 80630, 87960]
lr_multiplier.warmup_length = 500 / 87960
lr_multiplier.warmup_method = "constant"
lr_multiplier.warmup_factor = 1.0 / 3.0
train.checkpointer.period = 7330
train.eval_period = 0
