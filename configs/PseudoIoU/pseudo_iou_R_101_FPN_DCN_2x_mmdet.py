# The Pseudo-IoU authors' released R_101_FPN_DCN_2x model (mmdetection 2.11), to evaluate its
# checkpoint
# after `python tools/convert_checkpoint.py --source mmdet2-pseudo-iou`
# (projects/PseudoIoU/README.md, "Use the released models"); the Python-config twin of
# pseudo_iou_R_101_FPN_DCN_2x_mmdet.yaml. The training config it imports is already the release's.
# python train_net.py --config-file configs/PseudoIoU/pseudo_iou_R_101_FPN_DCN_2x_mmdet.py \
#     --eval-only \
#     train.init_checkpoint=path/to/converted.pth
from .pseudo_iou_R_101_FPN_DCN_2x import dataloader, lr_multiplier, model, optimizer, train

train.init_checkpoint = ""  # the converted checkpoint: train.init_checkpoint=path/to/converted.pth
train.output_dir = "output/pseudo_iou_R_101_FPN_DCN_2x_mmdet"
