"""Source side of the AutoAssign parity check: mmdetection 3.3's AutoAssign with random
weights -> its checkpoint and its outputs on two images (run by hand, in a throw-away
environment; see tools/parity/README.md).

    python tools/parity/mmdet3_autoassign.py --size reduced --out tests/fixtures/convert/mmdet3_autoassign
    python tools/parity/mmdet3_autoassign.py --size full --out /tmp/parity/mmdet3_autoassign_full

The model is the model zoo's ``configs/autoassign/autoassign_r50-caffe_fpn_1x_coco.py``
(``--size full``) or the same with narrower layers (``--size reduced``, :data:`common.REDUCED`).
Writes ``source.pth`` (``{"meta", "state_dict"}`` as mmdetection publishes checkpoints),
``outputs.pth`` (:mod:`anchor_free_app.convert.parity` format) and ``capped.pth``: the
detections of the same model and images with the test settings :data:`CAPPED`, under which some
levels have more candidates above the threshold than ``nms_pre`` (the candidate cap of
``filter_scores_and_topk``), and the config options that give this project's model these
settings.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmcv_ext_stub  # noqa: E402

mmcv_ext_stub.install()

from common import FULL, REDUCED, caffe_resnet_cfg, make_images, randomize_, save_capped  # noqa: E402

#: test_cfg changes of capped.pth and this project's equivalent options (1000 detections per
#: image, so that every candidate that survives NMS shows):
#: with 0.03, P3 has ~530 and P4 ~160 class probabilities above it on the reduced model.
CAPPED = dict(score_thr=0.03, nms_pre=100, max_per_img=1000)
CAPPED_OPTS = [
    "MODEL.AUTOASSIGN.SCORE_THRESH_TEST", "0.03", "MODEL.AUTOASSIGN.TOPK_CANDIDATES_TEST", "100",
    "TEST.DETECTIONS_PER_IMAGE", "1000",
]


def build(size):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    s = FULL if size == "full" else REDUCED
    cfg = dict(
        type="AutoAssign",
        data_preprocessor=dict(
            type="DetDataPreprocessor",
            mean=[102.9801, 115.9465, 122.7717],
            std=[1.0, 1.0, 1.0],
            bgr_to_rgb=False,
            pad_size_divisor=32,
        ),
        backbone=caffe_resnet_cfg(s),
        neck=dict(
            type="FPN",
            in_channels=s["res_out"],
            out_channels=s["fpn"],
            start_level=1,
            add_extra_convs=True,
            num_outs=5,
            relu_before_extra_convs=True,
        ),
        bbox_head=dict(
            type="AutoAssignHead",
            num_classes=s["classes"],
            in_channels=s["fpn"],
            stacked_convs=s["convs"],
            feat_channels=s["fpn"],
            strides=[8, 16, 32, 64, 128],
            loss_bbox=dict(type="GIoULoss", loss_weight=5.0),
        ),
        train_cfg=None,
        test_cfg=dict(
            nms_pre=1000,
            min_bbox_size=0,
            score_thr=0.05,
            nms=dict(type="nms", iou_threshold=0.6),
            max_per_img=100,
        ),
    )
    from mmengine.config import ConfigDict

    return MODELS.build(ConfigDict(cfg)), cfg


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=["reduced", "full"], default="reduced")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cls-bias",
        type=float,
        default=None,
        help="mean classifier bias (default -4 reduced, -6 full): few enough (location, class) pairs above the 0.05 threshold "
        "that no level has more than 1000 candidates (then the releases' different top-k "
        "rankings select the same set)",
    )
    args = parser.parse_args()
    if args.cls_bias is None:
        args.cls_bias = -4.0 if args.size == "reduced" else -6.0

    import mmdet
    from mmdet.structures import DetDataSample

    torch.manual_seed(args.seed)
    model, cfg = build(args.size)
    randomize_(
        model,
        args.seed,
        {
            # class probabilities spread around the 0.05 threshold; distances ~1 stride
            "bbox_head.conv_cls.bias": lambda shape, g: args.cls_bias + 0.5 * torch.randn(shape, generator=g),
            "bbox_head.conv_reg.bias": lambda shape, g: 1.0 + 0.1 * torch.randn(shape, generator=g),
        },
    )
    model.eval()
    os.makedirs(args.out, exist_ok=True)
    torch.save(
        {"meta": {"mmdet_version": mmdet.__version__, "config": repr(cfg)}, "state_dict": model.state_dict()},
        os.path.join(args.out, "source.pth"),
    )
    images = make_images()
    framework = f"mmdet {mmdet.__version__}"
    out = {"images": [torch.from_numpy(i.copy()) for i in images], "levels": [], "detections": [], "framework": framework}
    batches = []
    with torch.no_grad():
        for img in images:
            h, w = img.shape[:2]
            sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0)))
            data = model.data_preprocessor(
                {"inputs": [torch.from_numpy(img.transpose(2, 0, 1).copy())], "data_samples": [sample]}, False
            )
            batches.append(data)
            feats = model.extract_feat(data["inputs"])
            cls_scores, bbox_preds, objectness = model.bbox_head(feats)
            out["levels"].append(
                [
                    {"cls": c[0].clone(), "box": b[0].clone(), "quality": o[0].clone()}
                    for c, b, o in zip(cls_scores, bbox_preds, objectness)
                ]
            )
        out["detections"] = [detect(model, data) for data in batches]
        torch.save(out, os.path.join(args.out, "outputs.pth"))
        model.bbox_head.test_cfg.update(CAPPED)
        capped = [detect(model, data) for data in batches]
    save_capped(args.out, framework, CAPPED, CAPPED_OPTS, capped)
    print("wrote", args.out)


def detect(model, data):
    """The detections of ``model.predict`` on one preprocessed image, in input pixels."""
    pred = model.predict(data["inputs"], data["data_samples"], rescale=False)[0].pred_instances
    print(f"{len(pred.scores)} detections, top scores {pred.scores[:3].tolist()}")
    return {"boxes": pred.bboxes.clone(), "scores": pred.scores.clone(), "classes": pred.labels.clone()}


if __name__ == "__main__":
    main()
