# AutoAssign on the built-in demo dataset (generated shapes, 4 classes, 128 x 128 images), from
# scratch on a small R-18 FPN: the Python-config twin of autoassign_R_18_FPN_demo.yaml (same
# data, schedule and seed as the other demo configs).
# python train_net.py --config-file configs/AutoAssign/autoassign_R_18_FPN_demo.py train.device=cpu
import torch

from anchor_free_app.engine import full_model_clipped_optimizer

from ..common.demo_shapes import use_demo_shapes, use_r18_from_scratch
from .autoassign_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

use_r18_from_scratch(model, p6_in_channels=512)  # P6 from C5 (res5 of R-18: 512 channels)
model.head.input_shape = [{"channels": 64}] * 5
model.head.num_convs = 2
train.init_checkpoint = ""  # trained from scratch: no download needed
use_demo_shapes(dataloader)

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
