# The AF-baseline (every in-box point a positive, paper Table 2 row 1) on the built-in demo
# dataset: the Python-config twin of af_baseline_R_18_FPN_demo.yaml.
from .pseudo_iou_R_18_FPN_demo import dataloader, lr_multiplier, model, optimizer, train

model.assigner.assigner = "all_in_box"
train.output_dir = "output/demo_af_baseline"
