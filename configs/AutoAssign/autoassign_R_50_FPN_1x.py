# The released model: R-50 FPN, 1x (90k iterations, 16 images), 800 single scale: the
# Python-config twin of autoassign_R_50_FPN_1x.yaml (the release's training:
# Megvii-BaseDetection/AutoAssign, auto_assign.res50.fpn.coco.800size.1x/config.py).
# Release README (val2017): 40.5 AP / 59.8 AP50 / 44.0 AP75.
# python train_net.py --config-file configs/AutoAssign/autoassign_R_50_FPN_1x.py --num-gpus 8
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.model_zoo import get_config

from ..common.data.coco_detection import dataloader
from ..common.models.autoassign import model

optimizer = get_config("common/optim.py").SGD
# Detectron2's 1x: lr x0.1 at 60k and 80k of 90k, linear warm-up from 0.001 over 1000 (release).
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x
train = get_config("common/train.py").train

model.backbone.bottom_up.stages.depth = 50
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.output_dir = "output/autoassign_R_50_FPN_1x"

dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(800,), sample_style="choice", max_size=1333),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 16  # 8 GPUs x 2 images

optimizer.lr = 0.01  # SGD, momentum 0.9, weight decay 1e-4, none on norm layers; no clipping
train.max_iter = 90000
train.checkpointer.period = 5000
train.eval_period = 0
# The reported release run used seed 55617283 (cvpods); Detectron2's random streams differ, so
# the same seed does not replay that run, it only makes this one repeatable.
train.seed = 55617283
