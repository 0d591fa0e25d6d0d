"""Source side of the cvpods AutoAssign parity check: the AutoAssign authors' released model
code run with random weights -> a checkpoint in the release's layout and its outputs on two
images (run by hand, in this project's environment; see tools/parity/README.md)::

    python tools/parity/cvpods_autoassign.py --release AutoAssign/auto_assign.res50.fpn.coco.800size.1x \\
        --cvpods cvpods --out tests/fixtures/convert/cvpods_autoassign

cvpods is not on PyPI and builds compiled ops; what runs here is the release's own
``auto_assign.py`` (``AutoAssign`` and ``AutoAssignHead``: head, forward, inference,
post-processing) and cvpods' own ``modeling/box_regression.py`` (``Shift2BoxTransform``) and
``modeling/anchor_generator.py`` (``ShiftGenerator``), executed from a checkout of
Megvii-BaseDetection/AutoAssign and Megvii-BaseDetection/cvpods, with their ``cvpods.*`` imports
served by Detectron2, of which cvpods is a fork: ``ShapeSpec``, ``batched_nms``, ``cat``,
``Boxes``, ``ImageList``, ``Instances``, ``pairwise_iou``, ``detector_postprocess``,
``permute_to_N_HWA_K``, ``log_first_n``. The backbone is Detectron2's ResNet + FPN with P6 from C5
(``build_anchor_free_resnet_fpn_backbone``, ``TOP_BLOCK_IN_FEATURE res5``), whose module names
are those of cvpods' ``build_retinanet_resnet_fpn_backbone`` (``cvpods/modeling/backbone/
{resnet,fpn}.py``: ``bottom_up.stem.conv1.norm``, ``res2``-``res5``, ``fpn_lateral*``,
``fpn_output*``, ``top_block.p6``/``p7``). Not covered: cvpods' own ResNet/FPN code (read, not run).

Besides ``source.pth`` and ``outputs.pth``, writes ``capped.pth``: the detections of the same
model and images with the test settings :data:`CAPPED`, under which every level has more
(location, class) pairs above the threshold than the release keeps
(``min(topk_candidates, H x W)``), and the config options that give this project's model these
settings.
"""
import argparse
import os
import sys
import types

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from common import REDUCED, FULL, make_images, randomize_, save_capped  # noqa: E402

#: The release's inference settings of capped.pth (its AutoAssign attributes) and this project's
#: equivalent options: above 0.02, P3 has ~900 of its 560 x 8 pairs (capped at 200), P4-P7 more
#: pairs than locations (capped at H x W) on the reduced model; 1000 detections per image, so
#: that every candidate that survives NMS shows.
CAPPED = dict(score_threshold=0.02, topk_candidates=200, max_detections_per_image=1000)
CAPPED_OPTS = [
    "MODEL.AUTOASSIGN.SCORE_THRESH_TEST", "0.02", "MODEL.AUTOASSIGN.TOPK_CANDIDATES_TEST", "200",
    "TEST.DETECTIONS_PER_IMAGE", "1000",
]


class _Scale(nn.Module):
    """cvpods/modeling/meta_arch/fcos.py ``Scale`` (its module imports all of cvpods)."""

    def __init__(self, init_value=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.FloatTensor([init_value]))

    def forward(self, input):
        return input * self.scale


def _module(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _exec_file(name, path):
    module = _module(name)
    module.__file__ = path
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), module.__dict__)
    return module


def install_cvpods(cvpods_root: str):
    """``cvpods.*`` modules the release imports: cvpods' own files where they import nothing
    else, Detectron2's equivalents for the rest."""
    from detectron2 import layers, structures
    from detectron2.modeling.meta_arch.retinanet import permute_to_N_HWA_K
    from detectron2.modeling.postprocessing import detector_postprocess
    from detectron2.utils.logger import log_first_n

    _module("cvpods")
    _module("cvpods.layers", ShapeSpec=layers.ShapeSpec, batched_nms=layers.batched_nms, cat=layers.cat)
    _module(
        "cvpods.structures",
        Boxes=structures.Boxes,
        RotatedBoxes=structures.RotatedBoxes,
        ImageList=structures.ImageList,
        Instances=structures.Instances,
        pairwise_iou=structures.pairwise_iou,
    )
    _module("cvpods.utils", log_first_n=log_first_n)
    _module("cvpods.modeling")
    _module("cvpods.modeling.losses", iou_loss=None)  # training only
    _module("cvpods.modeling.meta_arch")
    _module("cvpods.modeling.meta_arch.fcos", Scale=_Scale)
    _module("cvpods.modeling.meta_arch.retinanet", permute_to_N_HWA_K=permute_to_N_HWA_K)
    _module("cvpods.modeling.postprocessing", detector_postprocess=detector_postprocess)
    _exec_file("cvpods.modeling.box_regression", os.path.join(cvpods_root, "cvpods/modeling/box_regression.py"))
    return _exec_file(
        "cvpods.modeling.anchor_generator", os.path.join(cvpods_root, "cvpods/modeling/anchor_generator.py")
    )


def _ns(**kw):
    return types.SimpleNamespace(**kw)


def build(size, release_dir, cvpods_root, config_file):
    anchor_generator = install_cvpods(cvpods_root)
    release = _exec_file("auto_assign_release", os.path.join(release_dir, "auto_assign.py"))
    from detectron2.modeling import build_backbone

    from anchor_free_app.config import setup_cfg

    s = FULL if size == "full" else REDUCED
    d2cfg = setup_cfg(config_file, ["MODEL.DEVICE", "cpu"])
    # The release's AutoAssign reads these keys (its config.py + cvpods' fcos_config.py).
    cfg = _ns(
        MODEL=_ns(
            DEVICE="cpu",
            PIXEL_MEAN=list(d2cfg.MODEL.PIXEL_MEAN),
            PIXEL_STD=list(d2cfg.MODEL.PIXEL_STD),
            SHIFT_GENERATOR=_ns(NUM_SHIFTS=1, OFFSET=0.0),
            FCOS=_ns(
                NUM_CLASSES=s["classes"],
                IN_FEATURES=["p3", "p4", "p5", "p6", "p7"],
                FPN_STRIDES=[8, 16, 32, 64, 128],
                NUM_CONVS=s["convs"],
                PRIOR_PROB=0.02,
                NORM_REG_TARGETS=True,
                FOCAL_LOSS_ALPHA=0.25,
                FOCAL_LOSS_GAMMA=2.0,
                IOU_LOSS_TYPE="giou",
                REG_WEIGHT=5.0,
                BBOX_REG_WEIGHTS=(1.0, 1.0, 1.0, 1.0),
                SCORE_THRESH_TEST=0.05,
                TOPK_CANDIDATES_TEST=1000,
                NMS_THRESH_TEST=0.6,
            ),
        ),
        TEST=_ns(DETECTIONS_PER_IMAGE=100),
    )
    cfg.build_backbone = lambda cfg_, input_shape=None: build_backbone(d2cfg)
    cfg.build_shift_generator = lambda cfg_, shapes: anchor_generator.ShiftGenerator(cfg_, shapes)
    model = release.AutoAssign(cfg)
    if size == "reduced":
        # The release hard-codes 80 x 2 for mu and sigma; the reduced model has 8 classes.
        model.mu = nn.Parameter(torch.zeros(s["classes"], 2))
        model.sigma = nn.Parameter(torch.ones(s["classes"], 2))
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--release", required=True, help="AutoAssign/auto_assign.res50.fpn.coco.800size.1x")
    parser.add_argument("--cvpods", required=True, help="a cvpods checkout")
    parser.add_argument("--size", choices=["reduced", "full"], default="reduced")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cls-bias", type=float, default=None, help="default -3 reduced, -5 full (score = cls x obj)")
    args = parser.parse_args()
    if args.cls_bias is None:
        args.cls_bias = -3.0 if args.size == "reduced" else -5.0
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config = (
        os.path.join(root, "tests/fixtures/convert/cvpods_autoassign/config.yaml")
        if args.size == "reduced"
        else os.path.join(root, "configs/AutoAssign/autoassign_R_50_FPN_1x_cvpods.yaml")
    )
    torch.manual_seed(args.seed)
    model = build(args.size, args.release, args.cvpods, config)
    randomize_(
        model,
        args.seed,
        {
            "head.cls_score.bias": lambda shape, g: args.cls_bias + 0.5 * torch.randn(shape, generator=g),
            "head.bbox_pred.bias": lambda shape, g: 1.0 + 0.1 * torch.randn(shape, generator=g),
        },
    )
    model.eval()
    os.makedirs(args.out, exist_ok=True)
    # cvpods' DefaultCheckpointer.save: {"model": state_dict, ...}
    torch.save({"model": model.state_dict(), "iteration": 0}, os.path.join(args.out, "source.pth"))
    images = make_images()
    out = {"images": [torch.from_numpy(i.copy()) for i in images], "levels": [], "detections": [],
           "framework": "AutoAssign release auto_assign.py + cvpods box_regression/anchor_generator on Detectron2"}
    with torch.no_grad():
        for img in images:
            h, w = img.shape[:2]
            inputs = [{"image": torch.from_numpy(img.transpose(2, 0, 1).copy()).float(), "height": h, "width": w}]
            batch = model.preprocess_image(inputs)
            feats = model.backbone(batch.tensor)
            feats = [feats[f] for f in model.in_features]
            cls, box, obj = model.head(feats)
            out["levels"].append(
                [{"cls": c[0].clone(), "box": b[0].clone(), "quality": o[0].clone()} for c, b, o in zip(cls, box, obj)]
            )
        out["detections"] = [detect(model, img) for img in images]
        torch.save(out, os.path.join(args.out, "outputs.pth"))
        for name, value in CAPPED.items():
            setattr(model, name, value)
        capped = [detect(model, img) for img in images]
    save_capped(args.out, out["framework"], CAPPED, CAPPED_OPTS, capped)
    print("wrote", args.out)


def detect(model, img):
    """The release model's detections on one (H, W, 3) image, in input pixels."""
    h, w = img.shape[:2]
    inputs = [{"image": torch.from_numpy(img.transpose(2, 0, 1).copy()).float(), "height": h, "width": w}]
    inst = model(inputs)[0]["instances"]
    print(f"image {h}x{w}: {len(inst)} detections, top scores {inst.scores[:3].tolist()}")
    return {"boxes": inst.pred_boxes.tensor.clone(), "scores": inst.scores.clone(), "classes": inst.pred_classes.clone()}


if __name__ == "__main__":
    main()
