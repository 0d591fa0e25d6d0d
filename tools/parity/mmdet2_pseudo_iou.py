"""Source side of the Pseudo-IoU parity check: the authors' model (mmdetection 2.11 + their
``PIOUHead``) with random weights -> its checkpoint and its outputs on two images (run by hand,
in a throw-away environment; see tools/parity/README.md).

    python tools/parity/mmdet2_pseudo_iou.py --piou-head piou_head.py --size reduced \\
        --out tests/fixtures/convert/mmdet2_pseudo_iou

``--piou-head`` is the authors' ``mmdet/models/dense_heads/piou_head.py`` (SHI-Labs/
Pseudo-IoU-for-Anchor-Free-Object-Detection), registered into mmdetection 2.11. Without it,
mmdetection 2.11's own ``FCOSHead`` is used with the same arguments: the authors' head is that
class with other training targets (its ``_init_layers``, ``forward``, ``get_bboxes``,
``_get_bboxes`` and ``_get_points_single`` are FCOSHead's, character for character), so the
layers, the checkpoint keys and the inference are the same. The model is the release's
``configs/pseudo-iou/piou_r50_caffe_fpn_gn-head_1x_coco.py`` (``--size full``) or the same with
narrower layers (``--size reduced``, :data:`common.REDUCED`). Besides ``source.pth`` and
``outputs.pth``, writes ``capped.pth``: the detections of the same model and images with
``nms_pre`` :data:`CAPPED` (P3 and P4 of the test images have more points than that), and the
config options that give this project's model this setting.
"""
import argparse
import importlib.util
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmcv_ext_stub  # noqa: E402

mmcv_ext_stub.install()

from common import FULL, REDUCED, caffe_resnet_cfg, make_images, randomize_, save_capped  # noqa: E402

MEAN = [102.9801, 115.9465, 122.7717]
#: test_cfg changes of capped.pth and this project's equivalent options: the 100 points of best
#: cls x centerness on P3 (560 points on the first image) and P4 (140); 1000 detections per image,
#: so that every candidate that survives NMS shows.
CAPPED = dict(nms_pre=100, max_per_img=1000)
CAPPED_OPTS = ["MODEL.PSEUDO_IOU.TOPK_CANDIDATES_TEST", "100", "TEST.DETECTIONS_PER_IMAGE", "1000"]


def register_piou_head(path: str) -> None:
    name = "mmdet.models.dense_heads.piou_head"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # @HEADS.register_module() registers PIOUHead


def build(size, piou_head):
    from mmcv import Config
    from mmdet.models import build_detector

    s = FULL if size == "full" else REDUCED
    head = dict(
        type="FCOSHead",
        num_classes=s["classes"],
        in_channels=s["fpn"],
        stacked_convs=s["convs"],
        feat_channels=s["fpn"],
        strides=[8, 16, 32, 64, 128],
        centerness_on_reg=True,
        norm_on_bbox=True,
        loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type="GIoULoss", loss_weight=1.0),
        loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
    )
    if piou_head:
        register_piou_head(piou_head)
        head.update(type="PIOUHead", piou=True, piou_thr=0.4)
    cfg = dict(
        type="FCOS",
        backbone=caffe_resnet_cfg(s),
        neck=dict(
            type="FPN",
            in_channels=s["res_out"],
            out_channels=s["fpn"],
            start_level=1,
            add_extra_convs=True,
            extra_convs_on_inputs=False,  # use P5
            num_outs=5,
            relu_before_extra_convs=True,
        ),
        bbox_head=head,
        train_cfg=dict(
            assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0, ignore_iof_thr=-1),
            allowed_border=-1,
            pos_weight=-1,
            debug=False,
        ),
        test_cfg=dict(
            nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100
        ),
    )
    cfg = Config(dict(model=cfg))
    return build_detector(cfg.model), cfg


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
    parser.add_argument("--piou-head", default="", help="the authors' piou_head.py")
    args = parser.parse_args()
    if args.cls_bias is None:
        args.cls_bias = -4.0 if args.size == "reduced" else -6.0

    import mmdet
    from mmcv.runner import save_checkpoint

    torch.manual_seed(args.seed)
    model, cfg = build(args.size, args.piou_head)
    randomize_(
        model,
        args.seed,
        {
            "bbox_head.conv_cls.bias": lambda shape, g: args.cls_bias + 0.5 * torch.randn(shape, generator=g),
            "bbox_head.conv_reg.bias": lambda shape, g: 1.0 + 0.1 * torch.randn(shape, generator=g),
        },
    )
    model.eval()
    os.makedirs(args.out, exist_ok=True)
    # mmcv's save_checkpoint, as the release's checkpoints were written ({"meta", "state_dict"}).
    save_checkpoint(model, os.path.join(args.out, "source.pth"), meta={"mmdet_version": mmdet.__version__, "config": cfg.pretty_text})
    images = make_images()
    head_name = type(model.bbox_head).__name__
    out = {"images": [torch.from_numpy(i.copy()) for i in images], "levels": [], "detections": [],
           "framework": f"mmdet {mmdet.__version__} {head_name}"}
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    batches = []
    with torch.no_grad():
        for img in images:
            h, w = img.shape[:2]
            x = (torch.from_numpy(img.transpose(2, 0, 1).copy()).float()[None] - mean)  # std 1, BGR
            ph, pw = -(-h // 32) * 32, -(-w // 32) * 32  # mmdet Pad(size_divisor=32), zeros
            x = torch.nn.functional.pad(x, (0, pw - w, 0, ph - h))
            meta = dict(img_shape=(h, w, 3), ori_shape=(h, w, 3), pad_shape=(ph, pw, 3),
                        scale_factor=torch.ones(4).numpy(), flip=False, batch_input_shape=(ph, pw))
            batches.append((x, meta))
            feats = model.extract_feat(x)
            cls_scores, bbox_preds, centernesses = model.bbox_head(feats)
            out["levels"].append(
                [
                    {"cls": c[0].clone(), "box": b[0].clone(), "quality": q[0].clone()}
                    for c, b, q in zip(cls_scores, bbox_preds, centernesses)
                ]
            )
        out["detections"] = [detect(model, x, meta) for x, meta in batches]
        torch.save(out, os.path.join(args.out, "outputs.pth"))
        model.bbox_head.test_cfg.update(CAPPED)
        capped = [detect(model, x, meta) for x, meta in batches]
    save_capped(args.out, out["framework"], CAPPED, CAPPED_OPTS, capped)
    print("wrote", args.out, "with", head_name)


def detect(model, x, meta):
    """``model.simple_test`` on one padded image: its per-class arrays as one set of
    detections by decreasing score, in input pixels."""
    result = model.simple_test(x, [meta], rescale=False)[0]  # per class (n, 5) arrays
    boxes, scores, classes = [], [], []
    for k, dets in enumerate(result):
        dets = torch.as_tensor(dets)
        boxes.append(dets[:, :4])
        scores.append(dets[:, 4])
        classes.append(torch.full((len(dets),), k, dtype=torch.int64))
    scores = torch.cat(scores)
    order = torch.argsort(scores, descending=True)
    print(f"{len(scores)} detections, top scores {scores[order][:3].tolist()}")
    return {"boxes": torch.cat(boxes)[order], "scores": scores[order], "classes": torch.cat(classes)[order]}


if __name__ == "__main__":
    main()
