"""Checks of dataset dicts before training starts: bad input gets an error that names the file,
the image id and the field, instead of a crash at hour 30 or boxes silently dropped."""
import logging
import math
import os
from typing import Dict, List

from PIL import Image

__all__ = ["check_dataset_dicts"]

logger = logging.getLogger(__name__)


def _image_name(record: Dict) -> str:
    return f"image id {record.get('image_id', '?')} ({record.get('file_name', '?')})"


def check_dataset_dicts(dataset_dicts: List[Dict], check_image_files: bool = True) -> None:
    """
    Raise ValueError on the first record with:

    - a missing ``file_name`` or an image file that is missing or not a readable image (header
      check with PIL: cheap, catches empty, truncated-header and non-image files);
    - a box with a NaN/Inf coordinate or a negative width/height (XYWH_ABS) / x1 < x0 (XYXY_ABS).

    Boxes of zero size, or partly/wholly outside the image, are legal in COCO-style data:
    Detectron2's mapper clips them to the image and drops the empty ones
    (``filter_empty_instances``); both detectors also handle boxes smaller than the finest stride
    (see the per-method pages). Crowd boxes are ignored by Detectron2's mapper.
    """
    if len(dataset_dicts) == 0:
        raise ValueError("The training dataset is empty (after filtering images without boxes)")
    for index, record in enumerate(dataset_dicts):
        if "file_name" not in record:
            raise ValueError(f"Dataset record {index} (image id {record.get('image_id')}) has no file_name")
        if check_image_files:
            _check_image_file(record)
        for ann in record.get("annotations", []):
            _check_box(record, ann)
        if check_image_files and index and index % 20000 == 0:
            logger.info(f"Checked {index}/{len(dataset_dicts)} dataset records")


def _check_image_file(record: Dict) -> None:
    path = record["file_name"]
    if not os.path.isfile(path):
        raise ValueError(f"{_image_name(record)}: image file not found")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as e:
        raise ValueError(f"{_image_name(record)}: not a readable image file ({e})") from e
    expected = (record.get("width", width), record.get("height", height))
    if (width, height) != expected:
        raise ValueError(
            f"{_image_name(record)}: image is {width}x{height} but the annotation says "
            f"{expected[0]}x{expected[1]} (width x height)"
        )


def _check_box(record: Dict, ann: Dict) -> None:
    from detectron2.structures import BoxMode

    box = ann.get("bbox")
    if box is None or len(box) != 4:
        raise ValueError(f"{_image_name(record)}: annotation without a 4-number bbox: {ann}")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box):
        raise ValueError(f"{_image_name(record)}: bbox with a NaN/Inf coordinate: {box}")
    mode = ann.get("bbox_mode", BoxMode.XYWH_ABS)
    if mode == BoxMode.XYWH_ABS:
        negative = box[2] < 0 or box[3] < 0
    elif mode == BoxMode.XYXY_ABS:
        negative = box[2] < box[0] or box[3] < box[1]
    else:
        negative = False
    if negative:
        raise ValueError(
            f"{_image_name(record)}: bbox with negative width or height: {box} ({BoxMode(mode).name})"
        )
