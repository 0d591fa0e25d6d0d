"""Pictures of AutoAssign's assignment, like the paper's Figures 3 and 4.

For one image of a registered dataset, per object and per FPN level: the center prior G(d), the
confidence weighting C(P+) = exp(P+ / tau) and the final positive weights w+ (PNG per object);
and the learned center prior (mu, sigma) of every class (one PNG, plus the values as JSON)::

    python -m anchor_free_app.visualize.autoassign --config-file configs/AutoAssign/autoassign_R_18_FPN_demo.yaml \\
        --weights output/demo_autoassign/model_final.pth --dataset demo_shapes_val --index 0 \\
        --output output/demo_autoassign/assignment [KEY VALUE ...]

The image goes through the test-time resize; ground-truth boxes come from the dataset.
"""
import argparse
import json
import os
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from anchor_free_app.config import setup_cfg  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from autoassign.autoassign import AutoAssign  # noqa: E402

__all__ = ["assignment_maps", "plot_assignment", "plot_center_priors", "main"]

ROWS = (("prior", "center weighting G(d)"), ("confidence", "confidence C(P+)"),
        ("pos_weight", "positive weights w+"))


@torch.no_grad()
def assignment_maps(model: AutoAssign, inputs: Dict) -> Dict:
    """
    Run the model on one mapped dataset dict (with ``instances``) and scatter the per-pair
    weights of each object onto the level grids.

    Returns:
        dict with ``image`` (H, W, 3) uint8 RGB of the resized input, ``boxes`` (G, 4),
        ``classes`` (G,), ``strides`` and, per name in ("prior", "confidence", "pos_weight"),
        a list over objects of a list over levels of (H_l, W_l) numpy arrays (0 outside the box).
    """
    model.eval()
    images = model.preprocess_image([inputs])
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    predictions = model.head(features)
    out = model.dense_outputs(features, predictions)
    instances = inputs["instances"].to(model.device)
    boxes = instances.gt_boxes.tensor.float()
    classes = instances.gt_classes.long()
    pairs, terms = model.positive_terms_single_image(
        out["confidence_prob"][0], out["pred_ltrb"][0], boxes, classes, out["grid_sizes"]
    )
    values = {"prior": terms.prior, "confidence": terms.confidence_weight,
              "pos_weight": terms.pos_weight}
    sizes = [h * w for h, w in out["grid_sizes"]]
    maps: Dict[str, List[List[np.ndarray]]] = {name: [] for name, _ in ROWS}
    for g in range(len(boxes)):
        sel = pairs.gt_idx == g
        for name, _ in ROWS:
            flat = torch.zeros(sum(sizes), device=boxes.device)
            flat[pairs.loc_idx[sel]] = values[name][sel].float()
            maps[name].append([
                level.reshape(h, w).cpu().numpy()
                for level, (h, w) in zip(flat.split(sizes), out["grid_sizes"])
            ])
    image = inputs["image"].permute(1, 2, 0).cpu().numpy()
    if model.input_format == "BGR":
        image = image[:, :, ::-1]
    return {"image": np.ascontiguousarray(image).clip(0, 255).astype(np.uint8),
            "boxes": boxes.cpu().numpy(), "classes": classes.cpu().numpy(),
            "strides": model.strides, **maps}


def plot_assignment(maps: Dict, index: int, class_names: Sequence[str], path: str) -> None:
    """One PNG for object ``index``: the image with its box, then a row per weighting
    (prior, confidence, positive weights) and a column per FPN level; one colour scale per row,
    so the levels that get the weight stand out."""
    strides = maps["strides"]
    fig, axes = plt.subplots(len(ROWS), len(strides) + 1, squeeze=False,
                             figsize=(2.2 * (len(strides) + 1), 2.2 * len(ROWS)))
    x0, y0, x1, y1 = maps["boxes"][index]
    name = class_names[maps["classes"][index]] if class_names else str(maps["classes"][index])
    for r, (key, title) in enumerate(ROWS):
        ax = axes[r, 0]
        ax.imshow(maps["image"])
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", lw=1.5))
        ax.set_title(f"{name}" if r == 0 else "", fontsize=8)
        ax.set_ylabel(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        levels = maps[key][index]
        vmax = max(float(level.max()) for level in levels) or 1.0
        height, width = maps["image"].shape[:2]
        gray = maps["image"].mean(axis=2)
        for c, (level, stride) in enumerate(zip(levels, strides)):
            ax = axes[r, c + 1]
            ax.imshow(gray, cmap="gray", alpha=0.35, extent=(0, width, height, 0))
            # Location (i, j) sits at (j * s, i * s): each cell is drawn centred there; cells
            # outside the object's box (weight 0) are transparent.
            extent = (-stride / 2, level.shape[1] * stride - stride / 2,
                      level.shape[0] * stride - stride / 2, -stride / 2)
            ax.imshow(np.ma.masked_equal(level, 0.0), cmap="viridis", vmin=0.0, vmax=vmax,
                      extent=extent, interpolation="nearest", alpha=0.9)
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="r", lw=0.8))
            ax.set_xlim(0, width)
            ax.set_ylim(height, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"P{int(round(np.log2(stride)))} (stride {stride})", fontsize=8)
            if key == "pos_weight":
                ax.set_xlabel(f"sum {level.sum():.2f}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_center_priors(model: AutoAssign, class_names: Sequence[str], path: str,
                       extent: float = 3.0) -> Optional[Dict[str, List]]:
    """
    The learned center prior of every class (paper Figure 4): G over offsets in
    [-extent, extent] strides, with the box centre (white +) and mu (red x). Also writes the
    values next to ``path`` as JSON. Returns them, or None when the model has no prior.
    """
    prior = model.center_prior
    if prior.mu is None:
        return None
    mu = prior.mu.detach().cpu().float()
    sigma = prior.sigma.detach().cpu().float()
    rows = mu.shape[0]
    names = list(class_names) if rows > 1 and class_names else [
        f"class {i}" if rows > 1 else "all classes" for i in range(rows)]
    grid = torch.linspace(-extent, extent, 121)
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")
    offsets = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)
    cols = min(rows, 5)
    fig, axes = plt.subplots((rows + cols - 1) // cols, cols, squeeze=False,
                             figsize=(2.2 * cols, 2.3 * ((rows + cols - 1) // cols)))
    for k in range(axes.size):
        ax = axes.flat[k]
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= rows:
            ax.axis("off")
            continue
        values = torch.exp(-((offsets - mu[k]) ** 2) / (2 * sigma[k] ** 2)).prod(dim=1)
        ax.imshow(values.reshape(len(grid), len(grid)).numpy(), cmap="viridis", vmin=0, vmax=1,
                  extent=(-extent, extent, extent, -extent))
        ax.plot([0], [0], "w+", ms=8)
        ax.plot([mu[k, 0]], [mu[k, 1]], "rx", ms=6)
        ax.set_title(f"{names[k]}\nmu ({mu[k, 0]:.2f}, {mu[k, 1]:.2f}) "
                     f"sigma ({sigma[k, 0]:.2f}, {sigma[k, 1]:.2f})", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    values = {"classes": names, "mu": mu.tolist(), "sigma": sigma.tolist()}
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump(values, f, indent=1)
    return values


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    """Command line entry point; returns the written PNG paths."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", default="", help="checkpoint (default: MODEL.WEIGHTS)")
    parser.add_argument("--dataset", required=True, help="a registered dataset name")
    parser.add_argument("--index", type=int, default=0, help="image index in the dataset")
    parser.add_argument("--max-objects", type=int, default=8)
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    cfg = setup_cfg(args.config_file, args.opts, freeze=False)
    if cfg.MODEL.META_ARCHITECTURE != "AutoAssign":
        raise ValueError(f"{args.config_file}: MODEL.META_ARCHITECTURE is "
                         f"{cfg.MODEL.META_ARCHITECTURE!r}, not 'AutoAssign'")
    model = build_model(cfg)
    weights = args.weights or cfg.MODEL.WEIGHTS
    if weights:
        DetectionCheckpointer(model).load(weights)
    dicts = DatasetCatalog.get(args.dataset)
    if not 0 <= args.index < len(dicts):
        raise IndexError(
            f"--index {args.index} out of range: {args.dataset} has {len(dicts)} images"
        )
    mapper = DatasetMapper(
        is_train=True,  # keeps the annotations; the augmentation is the deterministic test resize
        augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
        image_format=cfg.INPUT.FORMAT,
    )
    inputs = mapper(dicts[args.index])
    class_names = MetadataCatalog.get(args.dataset).get("thing_classes", None)
    maps = assignment_maps(model, inputs)
    os.makedirs(args.output, exist_ok=True)
    written = []
    for g in range(min(len(maps["boxes"]), args.max_objects)):
        label = class_names[maps["classes"][g]] if class_names else str(maps["classes"][g])
        path = os.path.join(args.output, f"image{args.index}_object{g}_{_safe(label)}.png")
        plot_assignment(maps, g, class_names, path)
        written.append(path)
    path = os.path.join(args.output, "center_prior_per_class.png")
    if plot_center_priors(model, class_names, path) is not None:
        written.append(path)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
