# The released R-101 model: 1x, multi-scale 640/800 (the Python-config twin of
# pseudo_iou_R_101_FPN_1x.yaml). Release README: 40.4 AP (val2017).
from .pseudo_iou_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
train.output_dir = "output/pseudo_iou_R_101_FPN_1x"
