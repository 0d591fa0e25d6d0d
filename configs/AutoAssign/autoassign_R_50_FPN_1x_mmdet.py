# mmdetection 3.x's AutoAssign (model zoo autoassign_r50-caffe_fpn_1x_coco, 40.4 AP on val2017),
# to evaluate its checkpoint after `python tools/convert_checkpoint.py --source mmdet3-autoassign`:
# the Python-config twin of autoassign_R_50_FPN_1x_mmdet.yaml, which says what differs from the
# authors' release (pixel mean; threshold on the class probability; boxes clipped before NMS).
from .autoassign_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.pixel_mean = [102.9801, 115.9465, 122.7717]
model.pixel_std = [1.0, 1.0, 1.0]
model.score_thresh_on = "cls"  # threshold the class probability alone, score = cls x obj
model.clip_boxes_before_nms = True  # clip, drop the boxes left empty, then NMS
model.test_topk_candidates_rule = "mmdet3"  # filter_scores_and_topk: threshold, then top-k
train.init_checkpoint = ""  # the converted checkpoint: train.init_checkpoint=path/to/converted.pth
train.output_dir = "output/autoassign_R_50_FPN_1x_mmdet"
