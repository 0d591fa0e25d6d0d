"""Draw the Pseudo-IoU label assignment of one image of a registered dataset (the paper's
Figures 1 and 2 for any image): per FPN level, every point coloured by its Pseudo-IoU with the box
the FCOS rules match it to, the positives of the configured rule circled, and the GT boxes.

    python -m anchor_free_app.visualize.pseudo_iou --config-file configs/PseudoIoU/pseudo_iou_R_18_FPN_demo.yaml \\
        --dataset demo_shapes_train --image-index 0 --output output/piou_vis \\
        [MODEL.PSEUDO_IOU.PSEUDO_IOU_THRESH 0.6 ...]

Writes ``<dataset>_<index>_<level>.png`` per level and ``<dataset>_<index>_levels.png`` (all
levels side by side). The image is resized as at test time (``INPUT.MIN_SIZE_TEST``, or
``--min-size``); no model weights are needed, the assignment does not depend on them.
"""
import argparse
import math
import os
import re
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from anchor_free.meta_arch import build_point_generator
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances

from pseudo_iou.assignment import pseudo_iou
from pseudo_iou.detector import build_assigner

__all__ = ["compute_assignment", "draw_assignment", "main"]


def _level_strides(in_features: Sequence[str]) -> List[int]:
    """Stride of FPN outputs named "p<k>": 2 ** k."""
    strides = []
    for name in in_features:
        match = re.fullmatch(r"p(\d+)", name)
        if match is None:
            raise ValueError(
                f"MODEL.PSEUDO_IOU.IN_FEATURES entry {name!r}: the visualiser derives strides from "
                "FPN names 'p<k>' (stride 2**k)"
            )
        strides.append(2 ** int(match.group(1)))
    return strides


def load_image_and_instances(cfg, record: Dict, min_size: Optional[int] = None):
    """
    Returns:
        image: (H, W, 3) uint8 RGB, resized as at test time;
        instances: Instances with gt_boxes / gt_classes in that frame.
    """
    image = utils.read_image(record["file_name"], format="RGB")
    utils.check_image_size(record, image)
    size = min_size or cfg.INPUT.MIN_SIZE_TEST
    aug_input = T.AugInput(image)
    transforms = T.AugmentationList([T.ResizeShortestEdge(size, cfg.INPUT.MAX_SIZE_TEST)])(
        aug_input
    )
    image = aug_input.image
    annos = [
        utils.transform_instance_annotations(obj, transforms, image.shape[:2])
        for obj in record.get("annotations", [])
        if obj.get("iscrowd", 0) == 0
    ]
    return image, utils.annotations_to_instances(annos, image.shape[:2])


@torch.no_grad()
def compute_assignment(
    cfg, image_size, instances: Instances, size_divisibility: int = 32
) -> List[Dict]:
    """
    Points of every level for an image of ``image_size`` (H, W) padded to ``size_divisibility``,
    and their assignment under ``cfg.MODEL.PSEUDO_IOU``.

    Returns:
        per level a dict: name, stride, points (R_l, 2), candidate (R_l,) box index chosen by the
        FCOS rules or -1, positive (R_l,) box index after the rule or -1, piou (R_l,) Pseudo-IoU
        with the candidate box (0 without one).
    """
    pcfg = cfg.MODEL.PSEUDO_IOU
    strides = _level_strides(pcfg.IN_FEATURES)
    height, width = (int(math.ceil(s / size_divisibility) * size_divisibility) for s in image_size)
    shapes = [(math.ceil(height / s), math.ceil(width / s)) for s in strides]
    points = build_point_generator(strides, pcfg.POINT_OFFSET)(
        [torch.zeros(1, 1, h, w) for h, w in shapes]
    )
    centers = Boxes.cat(points).get_centers()
    counts = [len(p) for p in points]
    gt_boxes = instances.gt_boxes
    matched, candidates = build_assigner(cfg)(centers, counts, gt_boxes)
    if len(gt_boxes) > 0:
        box = gt_boxes.tensor[candidates.clamp(min=0)]
        ltrb = torch.cat([centers - box[:, :2], box[:, 2:] - centers], dim=1)
        values = torch.where(candidates >= 0, pseudo_iou(ltrb), torch.zeros(len(centers)))
    else:
        values = torch.zeros(len(centers))
    levels = []
    for name, stride, pts, cand, pos, val in zip(
        pcfg.IN_FEATURES,
        strides,
        centers.split(counts),
        candidates.split(counts),
        matched.split(counts),
        values.split(counts),
    ):
        levels.append(
            dict(name=name, stride=stride, points=pts, candidate=cand, positive=pos, piou=val)
        )
    return levels


def _rule_text(cfg) -> str:
    pcfg = cfg.MODEL.PSEUDO_IOU
    op = ">=" if pcfg.THRESH_INCLUSIVE else ">"
    return {
        "all_in_box": "all FCOS positives (AF-baseline)",
        "pseudo_iou": f"Pseudo-IoU {op} {pcfg.PSEUDO_IOU_THRESH:g}",
        "centerness": f"centerness {op} {pcfg.CENTERNESS_THRESH:g}",
        "scaled_box": f"scaled box s = {pcfg.SCALED_BOX_FACTOR:g}",
    }[pcfg.ASSIGNER]


def draw_assignment(
    image: np.ndarray,
    instances: Instances,
    levels: List[Dict],
    rule: str,
    class_names=None,
    axes=None,
):
    """Draw each level on one matplotlib axis (a new figure row if ``axes`` is None)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if axes is None:
        _, axes = plt.subplots(1, len(levels), figsize=(4 * len(levels), 4.4), squeeze=False)
        axes = axes[0]
    height, width = image.shape[:2]
    boxes = instances.gt_boxes.tensor.tolist()
    classes = instances.gt_classes.tolist()
    colors = plt.get_cmap("tab10")
    scatter = None
    for ax, level in zip(axes, levels):
        ax.imshow((image.astype(np.float32) * 0.45 + 255 * 0.55).astype(np.uint8))  # faded
        pts = level["points"].numpy()
        inside = (pts[:, 0] < width) & (pts[:, 1] < height)
        cand = (level["candidate"].numpy() >= 0) & inside
        pos = (level["positive"].numpy() >= 0) & inside
        # marker area ~ a third of a cell at the figure's scale (4 in for the longer side)
        dot = float(np.clip((level["stride"] / max(height, width) * 4 * 72) ** 2 / 3, 3.0, 150.0))
        ax.scatter(
            pts[inside & ~cand, 0], pts[inside & ~cand, 1], s=dot / 5, c="0.5", alpha=0.5, lw=0
        )
        scatter = ax.scatter(
            pts[cand, 0],
            pts[cand, 1],
            s=dot,
            c=level["piou"].numpy()[cand],
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
            lw=0,
        )
        ax.scatter(
            pts[pos, 0], pts[pos, 1], s=dot * 2.2, facecolors="none", edgecolors="red", lw=1.2
        )
        for (x0, y0, x1, y1), c in zip(boxes, classes):
            ax.add_patch(
                Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colors(c % 10), lw=1.5)
            )
            if class_names:
                ax.text(x0, y0, class_names[c], color=colors(c % 10), fontsize=7, va="bottom")
        ax.set_title(
            f"{level['name']} (stride {level['stride']}): {int(pos.sum())} positive / "
            f"{int(cand.sum())} in box+range",
            fontsize=9,
        )
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        ax.axis("off")
    fig = axes[0].figure
    fig.suptitle(
        f"points coloured by Pseudo-IoU with their FCOS box; red circles: {rule}", fontsize=10
    )
    fig.colorbar(scatter, ax=list(axes), fraction=0.02, pad=0.01, label="Pseudo-IoU")
    return fig


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset", required=True, help="a registered dataset name")
    parser.add_argument("--image-index", type=int, default=0, help="index in the dataset's list")
    parser.add_argument("--output", required=True, help="output folder for the PNG files")
    parser.add_argument(
        "--min-size", type=int, default=None, help="short side (default: test size)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anchor_free_app.config import setup_cfg

    cfg = setup_cfg(args.config_file, args.opts, check_device=False)  # runs no model
    records = DatasetCatalog.get(args.dataset)
    if not 0 <= args.image_index < len(records):
        raise IndexError(
            f"--image-index {args.image_index}: {args.dataset} has {len(records)} images"
        )
    record = records[args.image_index]
    image, instances = load_image_and_instances(cfg, record, args.min_size)
    levels = compute_assignment(cfg, image.shape[:2], instances)
    class_names = MetadataCatalog.get(args.dataset).get("thing_classes", None)
    rule = _rule_text(cfg)

    os.makedirs(args.output, exist_ok=True)
    stem = f"{args.dataset}_{args.image_index}"
    written = []
    for level in levels:
        fig = draw_assignment(image, instances, [level], rule, class_names)
        path = os.path.join(args.output, f"{stem}_{level['name']}.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    fig = draw_assignment(image, instances, levels, rule, class_names)
    path = os.path.join(args.output, f"{stem}_levels.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
    for p in written:
        print(p)
    return written


if __name__ == "__main__":
    main()  # pragma: no cover
