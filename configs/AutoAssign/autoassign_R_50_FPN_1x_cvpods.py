# The AutoAssign authors' released model (cvpods; 40.5 AP on val2017), to evaluate its checkpoint
# after `python tools/convert_checkpoint.py --source cvpods-autoassign`
# (projects/AutoAssign/README.md, "Use the released models"): the Python-config twin of
# autoassign_R_50_FPN_1x_cvpods.yaml. Architecture and inference: autoassign_R_50_FPN_1x.py's.
# python train_net.py --config-file configs/AutoAssign/autoassign_R_50_FPN_1x_cvpods.py \
#     --eval-only train.init_checkpoint=path/to/converted.pth
from .autoassign_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

train.init_checkpoint = ""  # the converted checkpoint: train.init_checkpoint=path/to/converted.pth
train.output_dir = "output/autoassign_R_50_FPN_1x_cvpods"
