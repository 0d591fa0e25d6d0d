"""
Detectron2's ``common/data/coco.py`` for box-only detectors: no instance masks, and the
evaluator chosen by the dataset's ``evaluator_type`` (``anchor_free_app.engine.build_evaluator``:
COCO boxes, with pycocotools where Detectron2 has no compiled ops, or Pascal VOC), so a dataset
override (``dataloader.test.dataset.names=...``) keeps a working evaluator.
"""
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from anchor_free_app.engine import build_evaluator

dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.mapper.use_instance_mask = False
dataloader.evaluator = L(build_evaluator)(
    dataset_name="${..test.dataset.names}", output_dir="${train.output_dir}/inference"
)
