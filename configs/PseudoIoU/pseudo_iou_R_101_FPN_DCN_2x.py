# The released R-101-DCN model: 2x (24 epochs, lr steps after 16 and 22), multi-scale 640/800,
# DCNv2 with 4 deformable groups in res3-res5 (mmdet stage_with_dcn=(False, True, True, True));
# the Python-config twin of pseudo_iou_R_101_FPN_DCN_2x.yaml. Release README: 43.5 AP.
# Needs Detectron2's compiled ops: without them the model build fails with the reason.
from .pseudo_iou_R_101_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.deform_on_per_stage = [False, True, True, True]
model.backbone.bottom_up.stages.deform_modulated = True
model.backbone.bottom_up.stages.deform_num_groups = 4
train.max_iter = 175920
lr_multiplier.scheduler.milestones = [117280, 161260, 175920]
lr_multiplier.warmup_length = 500 / 175920
train.output_dir = "output/pseudo_iou_R_101_FPN_DCN_2x"
