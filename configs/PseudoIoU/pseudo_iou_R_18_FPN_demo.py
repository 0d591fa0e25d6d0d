# Pseudo-IoU (T = 0.4, release losses) on the built-in demo dataset (generated shapes, 4 classes,
# 128 x 128 images), from scratch on a small R-18 FPN: the Python-config twin of
# pseudo_iou_R_18_FPN_demo.yaml (same data, schedule and seed as the other demo configs).
# python train_net.py --config-file configs/PseudoIoU/pseudo_iou_R_18_FPN_demo.py train.device=cpu
from ..common.demo_shapes import use_demo_shapes, use_r18_from_scratch
from .pseudo_iou_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

use_r18_from_scratch(model, p6_in_channels=64)  # P6 from P5
model.head.input_shape = [{"channels": 64}] * 5
model.head.num_convs = 2
# The FCOS ranges halved, as the RetinaNet demo halves its anchor sizes (128 px images).
model.assigner.size_ranges.sizes_of_interest = [32, 64, 128, 256]
train.init_checkpoint = ""  # trained from scratch: no download needed
use_demo_shapes(dataloader)

optimizer.lr = 0.03
optimizer.clip_value = 10.0  # training from scratch: keep early steps bounded
train.max_iter = 1500
lr_multiplier.scheduler.milestones = [1000, 1300, 1500]
lr_multiplier.warmup_length = 100 / 1500
train.checkpointer.period = 500
train.eval_period = 0
train.seed = 42
train.output_dir = "output/demo_pseudo_iou"
