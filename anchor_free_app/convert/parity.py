"""Output parity between a source framework's model and the converted one.

The source side (run by hand in a throw-away environment with mmdetection,
``tools/parity/``) saves, for the same images, every level's raw head outputs and the final
detections; :func:`run_model` computes the same from this project's model and
:func:`compare_outputs` reports the differences. ``tests/test_convert.py`` runs this on the
committed fixtures (``tests/fixtures/convert/``).

Output format (a dict saved with ``torch.save``), per image ``i``:

* ``images[i]``: (H, W, 3) uint8 tensor, BGR, fed unresized to both models;
* ``levels[i]``: list over P3-P7 of ``{"cls": (K, Hl, Wl) logits, "box": (4, Hl, Wl) ltrb in
  input pixels, "quality": (1, Hl, Wl) centerness / objectness logits}``;
* ``detections[i]``: ``{"boxes": (D, 4) XYXY pixels, "scores": (D,), "classes": (D,)}``.
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["run_model", "compare_outputs", "match_detections"]


@torch.no_grad()
def run_model(model, images: Sequence[Tensor]) -> Dict[str, list]:
    """
    Per-level head outputs (box output multiplied by the level's stride, i.e. pixels) and the
    final detections of ``model`` (a built, eval-mode :class:`AnchorFreeDetector`) on each of
    ``images`` (HWC uint8 BGR), one image at a time, at its own size (no resize).
    """
    model.eval()
    out = {"levels": [], "detections": []}
    for image in images:
        h, w = image.shape[:2]
        tensor = torch.as_tensor(np.asarray(image)).permute(2, 0, 1).contiguous()
        inputs = [{"image": tensor, "height": h, "width": w}]
        batch = model.preprocess_image(inputs)
        features = model.backbone(batch.tensor)
        features = [features[f] for f in model.head_in_features]
        cls_logits, box_ltrb, quality = model.head(features)
        levels = []
        for l, stride in enumerate(model.strides):
            levels.append(
                {
                    "cls": cls_logits[l][0],
                    "box": box_ltrb[l][0] * stride,
                    "quality": None if quality is None else quality[l][0],
                }
            )
        out["levels"].append(levels)
        inst = model(inputs)[0]["instances"]
        out["detections"].append(
            {
                "boxes": inst.pred_boxes.tensor,
                "scores": inst.scores,
                "classes": inst.pred_classes,
            }
        )
    return out


def match_detections(src: Dict[str, Tensor], ours: Dict[str, Tensor], tol: float) -> Dict:
    """
    Pair each source detection with ours of the same class whose box and score are closest,
    greedily in decreasing source score.

    Returns:
        ``source``, ``ours``: the counts; ``matched``: pairs within ``tol`` (box coordinates and
        score); ``source_empty``: unmatched source detections of zero width or height (boxes of
        points in the padding, clipped to the image border: mmdet 2.11 outputs them, Detectron2's
        ``detector_postprocess`` drops them); ``unmatched``: the other unmatched source
        detections; ``ours_extra_max_score``: the best score among our unmatched detections
        (-1 if none); the max abs box / score difference over the matched pairs.
    """
    n_src, n_ours = len(src["scores"]), len(ours["scores"])
    used = torch.zeros(n_ours, dtype=torch.bool)
    max_box, max_score, unmatched, empty, matched = 0.0, 0.0, 0, 0, 0
    order = torch.argsort(src["scores"], descending=True)
    for i in order.tolist():
        box = src["boxes"][i]
        cand = (ours["classes"] == src["classes"][i]) & ~used
        j = -1
        if bool(cand.any()):
            idx = cand.nonzero()[:, 0]
            d_box = (ours["boxes"][idx] - box).abs().amax(dim=1)
            d_score = (ours["scores"][idx] - src["scores"][i]).abs()
            dist = torch.maximum(d_box, d_score)
            k = int(torch.argmin(dist))
            if float(dist[k]) <= tol:
                j = int(idx[k])
                used[j] = True
                matched += 1
                max_box = max(max_box, float(d_box[k]))
                max_score = max(max_score, float(d_score[k]))
        if j < 0:
            if float(box[2] - box[0]) <= 0 or float(box[3] - box[1]) <= 0:
                empty += 1
            else:
                unmatched += 1
    extra = ours["scores"][~used]
    return {
        "source": n_src,
        "ours": n_ours,
        "matched": matched,
        "source_empty": empty,
        "unmatched": unmatched,
        "ours_extra_max_score": float(extra.max()) if len(extra) else -1.0,
        "max_box_diff": max_box,
        "max_score_diff": max_score,
    }


def compare_outputs(source: Dict, ours: Dict, tol: float = 1e-4) -> List[Dict]:
    """
    Per image: the max abs difference of each output kind over all levels (``cls``, ``box``,
    ``quality``; ``box`` relative to ``max(1, |value|)``, as boxes are in pixels) and the
    detection match of :func:`match_detections` (box tolerance ``tol`` relative to the image size).
    """
    reports = []
    for i, (src_levels, our_levels) in enumerate(zip(source["levels"], ours["levels"])):
        rep: Dict = {"image": i}
        if len(src_levels) != len(our_levels):
            raise ValueError(f"image {i}: {len(src_levels)} source levels, {len(our_levels)} ours")
        for kind in ("cls", "box", "quality"):
            diffs = []
            for l, (s, o) in enumerate(zip(src_levels, our_levels)):
                if s[kind] is None and o[kind] is None:
                    continue
                s_t, o_t = torch.as_tensor(s[kind]).float(), o[kind].float()
                if s_t.shape != o_t.shape:
                    raise ValueError(
                        f"image {i} level {l} {kind}: source shape {tuple(s_t.shape)}, ours "
                        f"{tuple(o_t.shape)}"
                    )
                d = (s_t - o_t).abs()
                if kind == "box":
                    d = d / s_t.abs().clamp(min=1.0)
                diffs.append(float(d.max()) if d.numel() else 0.0)
            rep[kind] = max(diffs) if diffs else 0.0
        h, w = source["images"][i].shape[:2]
        src_det = {k: torch.as_tensor(v) for k, v in source["detections"][i].items()}
        rep["detections"] = match_detections(src_det, ours["detections"][i], tol * max(h, w))
        reports.append(rep)
    return reports
