"""The ground truth training sees, from dataset records, for a whole dataset at once.

Detectron2's ``DatasetMapper`` (training) gives each image, per record:

1. crowd annotations (``iscrowd`` 1) left out;
2. each box converted to XYXY (``BoxMode.convert``; an XYWH box given as a list is summed in
   float32, through ``torch.tensor``), resized with the image
   (``ResizeShortestEdge.get_output_shape`` and ``ResizeTransform.apply_box``: float64, or
   integers truncated when all four coordinates are Python ints; the min and max of its
   corners, so an inverted box comes out upright), clipped to the resized image
   (``transform_instance_annotations``);
3. ``annotations_to_instances`` (float32 ``Boxes``), then ``filter_empty_instances`` (boxes
   of width or height <= 1e-5 dropped).

:func:`collect_annotations` reads every record once (sizes and annotations only, never the
pixels) and :func:`resize_objects` applies steps 2-3 to all boxes with numpy, with the same
arithmetic, so the boxes are bitwise those of the mapper (``tests/test_assignment_report.py``
compares them with :func:`mapper_instances`, Detectron2's own functions). Random flips are not
applied: the report is for the unflipped images. Boxes given as numpy arrays or tensors, or in
another ``BoxMode``, take Detectron2's ``BoxMode.convert`` one by one.
"""
import copy
import dataclasses
from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances

__all__ = [
    "AnnotationTable",
    "ObjectTable",
    "collect_annotations",
    "mapper_instances",
    "resize_objects",
    "resized_shape",
]

# filter_empty_instances(box_threshold=1e-5), the mapper's default.
EMPTY_BOX_THRESHOLD = 1e-5


@dataclasses.dataclass
class AnnotationTable:
    """
    The non-crowd annotations of a list of records, in record order (A annotations, I images).

    Attributes:
        image_ids: (I,) object, each record's ``image_id`` (its index if absent).
        heights, widths: (I,) int64, the annotated image size.
        image_index: (A,) int64, the record of each annotation.
        ann_index: (A,) int64, its index in the record's ``annotations`` list.
        xyxy: (A, 4) float64, the box after ``BoxMode.convert`` to XYXY, as the mapper holds it.
        integer: (A,) bool, the converted box is made of integers (the mapper then truncates
            the resized coordinates).
        classes: (A,) int64, ``category_id``.
        num_crowd: crowd annotations left out.
    """

    image_ids: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    image_index: np.ndarray
    ann_index: np.ndarray
    xyxy: np.ndarray
    integer: np.ndarray
    classes: np.ndarray
    num_crowd: int

    @property
    def num_images(self) -> int:
        return len(self.heights)

    def original_sizes(self) -> np.ndarray:
        """(A,) sqrt of the box area in the original image, the box clipped to the image."""
        w = self.widths[self.image_index].astype(np.float64)
        h = self.heights[self.image_index].astype(np.float64)
        lo, hi = np.minimum(self.xyxy[:, :2], self.xyxy[:, 2:]), np.maximum(
            self.xyxy[:, :2], self.xyxy[:, 2:]
        )  # upright, as the mapper makes it
        (x0, y0), (x1, y1) = lo.T, hi.T
        bw = np.clip(np.minimum(x1, w) - np.maximum(x0, 0), 0, None)
        bh = np.clip(np.minimum(y1, h) - np.maximum(y0, 0), 0, None)
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(np.sqrt(bw * bh))


@dataclasses.dataclass
class ObjectTable:
    """
    The objects of a dataset at one training scale: what the detector's ``gt_instances`` hold
    (G objects sorted by image), with where each came from.

    Attributes:
        scale: the short-side length of the resize.
        input_hw: (I, 2) int64, each image's size after the resize.
        image_index: (G,) int64, the record of each object (sorted).
        ann_index: (G,) int64, its index in the record's ``annotations``.
        boxes: (G, 4) float32, XYXY in input pixels (the mapper's ``gt_boxes``).
        classes: (G,) int64.
        sizes: (G,) float64, sqrt(area) of the box in the original image (COCO's size
            categories are defined there).
        num_dropped: boxes the mapper drops (empty after clipping).
    """

    scale: int
    input_hw: np.ndarray
    image_index: np.ndarray
    ann_index: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    sizes: np.ndarray
    num_dropped: int

    def __len__(self) -> int:
        return len(self.image_index)


def _record_size(record: Dict, index: int) -> Tuple[int, int]:
    try:
        return int(record["height"]), int(record["width"])
    except KeyError as e:
        raise ValueError(
            f"Record {index} (image_id {record.get('image_id')!r}, "
            f"{record.get('file_name')!r}) has no {e.args[0]!r}: the assignment report reads "
            "image sizes from the records, not from the image files"
        ) from None


def _is_python_box(box) -> bool:
    return type(box) in (list, tuple) and len(box) == 4


def collect_annotations(records: Sequence[Dict]) -> AnnotationTable:
    """
    Read sizes and non-crowd annotations of ``records`` (Detectron2 dataset dicts) into arrays:
    one Python pass over the records, the rest vectorised.
    """
    sizes = [_record_size(r, i) for i, r in enumerate(records)]
    image_ids = np.empty(len(records), dtype=object)
    image_ids[:] = [r.get("image_id", i) for i, r in enumerate(records)]
    anns = [r.get("annotations") or () for r in records]
    kept = [[j for j, a in enumerate(a_list) if not a.get("iscrowd", 0)] for a_list in anns]
    counts = np.array([len(k) for k in kept], dtype=np.int64)
    num_crowd = sum(len(a) for a in anns) - int(counts.sum())
    flat = [a_list[j] for a_list, k in zip(anns, kept) for j in k]
    image_index = np.repeat(np.arange(len(records), dtype=np.int64), counts)
    ann_index = np.array([j for k in kept for j in k], dtype=np.int64)
    boxes = [a["bbox"] for a in flat]
    modes = np.array([int(a["bbox_mode"]) for a in flat], dtype=np.int64)
    classes = np.array([a["category_id"] for a in flat], dtype=np.int64)

    xyxy = np.zeros((len(flat), 4), dtype=np.float64)
    integer = np.zeros(len(flat), dtype=bool)
    simple = np.array([_is_python_box(b) for b in boxes], dtype=bool)
    simple &= (modes == int(BoxMode.XYWH_ABS)) | (modes == int(BoxMode.XYXY_ABS))
    idx = np.nonzero(simple)[0]
    if len(idx):
        raw = np.array([boxes[i] for i in idx], dtype=np.float64).reshape(-1, 4)
        # Integral values: the mapper's arrays are integer only if all four are Python ints.
        maybe_int = np.nonzero(np.all(raw == np.floor(raw), axis=1))[0]
        is_int = np.zeros(len(idx), dtype=bool)
        is_int[maybe_int] = [
            all(isinstance(v, (int, np.integer)) for v in boxes[idx[k]]) for k in maybe_int
        ]
        xywh = modes[idx] == int(BoxMode.XYWH_ABS)
        # BoxMode.convert on a list: torch.tensor(box) (float32 unless all ints), x1 = x0 + w.
        as32 = raw.astype(np.float32)
        summed = np.where(
            is_int[:, None],
            raw[:, :2] + raw[:, 2:],
            (as32[:, :2] + as32[:, 2:]).astype(np.float64),
        )
        converted = np.concatenate(
            [np.where(is_int[:, None], raw[:, :2], as32[:, :2].astype(np.float64)), summed],
            axis=1,
        )
        xyxy[idx] = np.where(xywh[:, None], converted, raw)
        integer[idx] = is_int
    for i in np.nonzero(~simple)[0]:  # other types or modes: Detectron2's convert per box
        box = np.asarray(BoxMode.convert(boxes[i], BoxMode(int(modes[i])), BoxMode.XYXY_ABS))
        xyxy[i] = box.astype(np.float64).reshape(4)
        integer[i] = box.dtype.kind in "iu"
    return AnnotationTable(
        image_ids=image_ids,
        heights=np.array([h for h, _ in sizes], dtype=np.int64).reshape(-1),
        widths=np.array([w for _, w in sizes], dtype=np.int64).reshape(-1),
        image_index=image_index,
        ann_index=ann_index,
        xyxy=xyxy,
        integer=integer,
        classes=classes,
        num_crowd=num_crowd,
    )


def resized_shape(height: int, width: int, scale: int, max_size: int) -> Tuple[int, int]:
    """(h, w) after ``ResizeShortestEdge`` to short side ``scale`` (Detectron2's function)."""
    return T.ResizeShortestEdge.get_output_shape(int(height), int(width), int(scale), max_size)


def resize_objects(table: AnnotationTable, scale: int, max_size: int) -> ObjectTable:
    """
    The mapper's steps 2-3 (module docstring) for every annotation of ``table`` at short side
    ``scale``, vectorised.
    """
    hw = np.stack([table.heights, table.widths], axis=1)
    unique, inverse = np.unique(hw, axis=0, return_inverse=True)
    new = np.array([resized_shape(h, w, scale, max_size) for h, w in unique], dtype=np.int64)
    input_hw = new.reshape(-1, 2)[inverse.reshape(-1)]  # (I, 2)
    img = table.image_index
    # ResizeTransform.apply_coords: x * (new_w * 1.0 / w), y * (new_h * 1.0 / h), float64.
    fx = input_hw[img, 1].astype(np.float64) / table.widths[img].astype(np.float64)
    fy = input_hw[img, 0].astype(np.float64) / table.heights[img].astype(np.float64)
    factor = np.stack([fx, fy, fx, fy], axis=1)
    boxes = table.xyxy * factor
    # Integer boxes: numpy assigns the products into the integer array (truncation).
    boxes = np.where(table.integer[:, None], np.trunc(boxes), boxes)
    # apply_box: min and max over the box's corners (an inverted box comes out upright).
    boxes = np.concatenate(
        [np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1
    )
    # transform_instance_annotations: clip(min=0), then minimum with (w, h, w, h).
    limit = input_hw[img][:, [1, 0, 1, 0]].astype(np.float64)
    boxes = np.minimum(boxes.clip(min=0), limit)
    gt = Boxes(torch.from_numpy(boxes))  # float32, as annotations_to_instances
    keep = gt.nonempty(threshold=EMPTY_BOX_THRESHOLD).numpy()
    return ObjectTable(
        scale=int(scale),
        input_hw=input_hw,
        image_index=img[keep],
        ann_index=table.ann_index[keep],
        boxes=gt.tensor.numpy()[keep],
        classes=table.classes[keep],
        sizes=table.original_sizes()[keep],
        num_dropped=int((~keep).sum()),
    )


def mapper_instances(record: Dict, scale: int, max_size: int) -> Instances:
    """
    The reference: ``gt_instances`` of one record as Detectron2's training ``DatasetMapper``
    makes them (crowd left out, ``transform_instance_annotations``, ``annotations_to_instances``,
    ``filter_empty_instances``), without the random flip and without reading the image.
    """
    height, width = _record_size(record, 0)
    new_h, new_w = resized_shape(height, width, scale, max_size)
    transforms = T.TransformList([T.ResizeTransform(height, width, new_h, new_w)])
    annos = [
        utils.transform_instance_annotations(copy.deepcopy(obj), transforms, (new_h, new_w))
        for obj in record.get("annotations") or ()
        if obj.get("iscrowd", 0) == 0
    ]
    instances = utils.annotations_to_instances(annos, (new_h, new_w))
    return utils.filter_empty_instances(instances)
