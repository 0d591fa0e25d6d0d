"""Bad and extreme ground truth for both meta-architectures: finite, correctly normalised
losses with gradients, or a clear error; never a NaN that trains on."""
import numpy as np
import pytest
import torch
from common import AA_DEMO, PIOU_DEMO, TINY_DATA

from anchor_free_app.config import setup_cfg
from detectron2.data import DatasetMapper
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

SIZE = 64
CONFIGS = {"PseudoIoU": PIOU_DEMO, "AutoAssign": AA_DEMO}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
    torch.manual_seed(0)
    cfg = setup_cfg(CONFIGS[request.param], TINY_DATA + ["MODEL.DEVICE", "cpu"], freeze=False)
    model = build_model(cfg)
    model.train()
    return model


def _input(boxes, classes=None, size=SIZE):
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    instances = Instances((size, size))
    instances.gt_boxes = Boxes(boxes)
    instances.gt_classes = (
        torch.as_tensor(classes) if classes is not None else torch.zeros(len(boxes), dtype=torch.long)
    )
    image = torch.from_numpy(np.random.RandomState(0).randint(0, 255, (3, size, size))).float()
    return {"image": image, "instances": instances, "height": size, "width": size}


def _losses_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    with EventStorage() as storage:
        losses = model(batch)
    for name, value in losses.items():
        assert torch.isfinite(value).all(), f"{name} = {value}"
    sum(losses.values()).backward()
    head_grads = {n: p.grad for n, p in model.head.named_parameters()}
    for name, grad in head_grads.items():
        assert grad is None or torch.isfinite(grad).all(), f"non-finite gradient in {name}"
    return losses, head_grads, storage


def test_image_without_boxes_next_to_one_with_a_box(model):
    losses, grads, _ = _losses_and_grads(model, [_input([]), _input([[10, 10, 40, 50]])])
    assert grads["cls_score.weight"] is not None and grads["cls_score.weight"].abs().sum() > 0
    assert grads["bbox_pred.weight"] is not None and grads["bbox_pred.weight"].abs().sum() > 0


def test_batch_without_any_box_gives_finite_losses_and_zero_box_terms(model):
    losses, grads, _ = _losses_and_grads(model, [_input([]), _input([])])
    assert losses  # every term present, so DDP workers stay in sync
    # classification still learns "background everywhere"
    assert grads["cls_score.weight"].abs().sum() > 0
    box_terms = [v for k, v in losses.items() if k in ("loss_box_reg", "loss_pos")]
    assert all(float(v) == 0.0 for v in box_terms)


def test_only_crowd_annotations_become_an_image_without_boxes(model, tmp_path):
    import cv2

    path = str(tmp_path / "img.png")
    cv2.imwrite(path, np.zeros((SIZE, SIZE, 3), np.uint8))
    from detectron2.structures import BoxMode

    record = {
        "file_name": path, "image_id": 1, "height": SIZE, "width": SIZE,
        "annotations": [{"bbox": [5, 5, 20, 20], "bbox_mode": BoxMode.XYWH_ABS,
                         "category_id": 0, "iscrowd": 1}],
    }  # fmt: skip
    cfg = setup_cfg(PIOU_DEMO, TINY_DATA, freeze=False)
    mapped = DatasetMapper(cfg, is_train=True)(record)
    assert len(mapped["instances"]) == 0  # crowd regions are not training targets
    _losses_and_grads(model, [mapped])


def test_one_box_and_a_thousand_boxes(model):
    rng = np.random.RandomState(0)
    xy = rng.uniform(0, SIZE - 8, size=(1000, 2))
    wh = rng.uniform(2, 40, size=(1000, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, SIZE)], axis=1)
    classes = rng.randint(0, 4, size=1000)
    one, _, _ = _losses_and_grads(model, [_input([[8, 8, 56, 40]], [2])])
    many, _, _ = _losses_and_grads(model, [_input(boxes, classes)])
    assert set(one) == set(many)


def test_degenerate_outside_and_tiny_boxes_are_handled(model):
    boxes = [
        [10, 10, 10, 30],  # zero width
        [10, 10, 30, 10],  # zero height
        [-20, -20, 20, 20],  # partly outside the image
        [100, 100, 140, 150],  # wholly outside the image
        [30.2, 30.2, 30.9, 30.9],  # far smaller than the finest stride (8)
        [5, 5, 60, 60],  # an ordinary box, so the image has positives
    ]
    _losses_and_grads(model, [_input(boxes, [0, 1, 2, 3, 0, 1])])


@pytest.mark.parametrize("bad", [[1.0, float("nan"), 5.0, 9.0], [1.0, 2.0, float("inf"), 9.0]])
def test_non_finite_box_is_rejected_with_the_box(model, bad):
    with pytest.raises(ValueError, match="(?i)box"):
        with EventStorage():
            model([_input([[5, 5, 20, 20], bad], [0, 1])])


def test_pseudo_iou_counts_objects_left_without_positive():
    cfg = setup_cfg(PIOU_DEMO, TINY_DATA + ["MODEL.DEVICE", "cpu"], freeze=False)
    model = build_model(cfg).train()
    # a 2x2 box between the stride-8 points (x = 4, 12, ...) contains no point
    _, _, storage = _losses_and_grads(model, [_input([[5, 5, 7, 7], [8, 8, 56, 56]], [0, 1])])
    assert storage.latest()["pseudo_iou/num_objects_without_pos"][0] == 1
