"""Checks of the training dataset dicts before the first iteration: bad input gets an error that
names the image id, the file and the field, instead of a crash at hour 30 or boxes silently
dropped; valid input (anything Detectron2's ``DatasetMapper`` trains on) is never rejected.

Two passes, both run once, on the main process. :func:`check_dataset_dicts` is the check, with
its settings as keyword arguments (what a Python-config front end calls);
:func:`check_training_data` derives them from a yacs config and runs it on the main process.

- **records** (always, with ``DATALOADER.CHECK_INPUTS``): every record has a ``file_name``; every
  non-crowd annotation has a ``bbox`` of 4 numbers (5 for ``BoxMode.XYWHA_ABS``) in an absolute
  ``bbox_mode``, all finite, with non-negative width and height, and an integer ``category_id``
  in ``[0, num_classes)`` (the model's ``NUM_CLASSES``); the datasets' ``thing_classes``
  (``MetadataCatalog``) are not more than ``num_classes``. Boxes and ids may be python, numpy
  or torch numbers (boxes also lists, tuples, arrays or tensors). Vectorised with numpy over
  all annotations of the dataset (about a second for COCO train2017's 860k boxes).
- **image files** (``DATALOADER.CHECK_IMAGE_FILES`` of them, spread evenly over the dataset; -1:
  all): the file exists and opens as an image (header only, through Detectron2's
  ``PathManager.open`` as ``read_image`` does, so any storage Detectron2 reads works), its size
  after EXIF orientation (what ``detectron2.data.detection_utils.read_image`` returns) is the
  annotated one, and its mode converts to ``INPUT.FORMAT``.
"""
import functools
import logging
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

__all__ = [
    "check_dataset_dicts",
    "check_thing_classes",
    "check_image_files",
    "check_records",
    "check_training_data",
    "image_size_after_exif",
    "run_on_main_process",
]

logger = logging.getLogger(__name__)

# EXIF tag "Orientation" (``detectron2.data.detection_utils._EXIF_ORIENT``); values 5-8 transpose
# the image (``_apply_exif_orientation``), so read_image returns it with width and height swapped.
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
# Modes ``detectron2.structures.BoxMode.convert`` converts to XYXY_ABS (the relative modes raise
# "Relative mode not yet supported!"), and the number of values each takes.
_BOX_LENGTH = {BoxMode.XYXY_ABS: 4, BoxMode.XYWH_ABS: 4, BoxMode.XYWHA_ABS: 5}


def _image_name(record: Dict) -> str:
    return f"image id {record.get('image_id', '?')} ({record.get('file_name', '?')})"


# ---------------------------------------------------------------- distributed
def run_on_main_process(check: Callable[[], None]) -> None:
    """
    Run ``check`` on the main process only; every other process waits for its verdict, so all
    of them raise the same error (instead of some hanging in the next collective) or all go on.

    The verdict is exchanged with ``detectron2.utils.comm.all_gather`` (a gloo group, CPU or
    CUDA), which also acts as the barrier. The wait is bounded by the process group's timeout
    (30 minutes in Detectron2's ``launch``).
    """
    error: Optional[str] = None
    caught: Optional[BaseException] = None
    if comm.is_main_process():
        try:
            check()
        except Exception as e:  # sent to the other processes, then re-raised here
            caught, error = e, f"{type(e).__name__}: {e}"
    if comm.get_world_size() > 1:
        error = comm.all_gather(error)[0]
    if caught is not None:
        raise caught
    if error is not None:
        raise ValueError(f"The training data check failed on the main process: {error}")


def check_training_data(dataset_dicts: List[Dict], settings) -> None:
    """
    The checks ``DATALOADER.CHECK_INPUTS`` / ``dataloader.check_inputs`` turn on, with the
    run's settings (an ``anchor_free_app.config.RunSettings`` of a yacs or a Python config:
    ``check_image_files``, ``input_format``, the model's ``num_classes`` and its key,
    ``train_datasets``), run once on the main process.
    """
    run_on_main_process(
        lambda: check_dataset_dicts(
            dataset_dicts,
            image_format=settings.input_format,
            num_image_files=settings.check_image_files,
            num_classes=settings.num_classes,
            num_classes_key=settings.num_classes_key,
            dataset_names=settings.train_datasets,
        )
    )


# ---------------------------------------------------------------- both passes
def check_dataset_dicts(
    dataset_dicts: Sequence[Dict],
    *,
    image_format: Optional[str] = None,
    num_image_files: int = -1,
    num_classes: Optional[int] = None,
    num_classes_key: str = "num_classes",
    dataset_names: Sequence[str] = (),
    num_threads: int = 8,
) -> None:
    """
    Raise ValueError, naming the image id, the file and the problem, on the first bad record.

    Args:
        dataset_dicts: Detectron2 dataset dicts (``file_name``, ``image_id``, ``height``,
            ``width``, ``annotations`` with ``bbox``, ``bbox_mode``, ``category_id``,
            ``iscrowd``).
        image_format: ``INPUT.FORMAT``; the image mode must convert to it (None: not checked).
        num_image_files: how many image files to open (header only), spread evenly over the
            records; -1: all, 0: none.
        num_classes: the model's number of classes K: every non-crowd ``category_id`` must be
            an integer in [0, K), and no dataset of ``dataset_names`` may name more than K
            ``thing_classes`` (None: ids only checked to be integers).
        num_classes_key: the config key of ``num_classes``, named in the errors (e.g.
            ``MODEL.PSEUDO_IOU.NUM_CLASSES``).
        dataset_names: the registered datasets ``dataset_dicts`` come from (``DATASETS.TRAIN``;
            a name or a sequence of names), whose ``MetadataCatalog`` ``thing_classes`` are
            compared with ``num_classes``.
        num_threads: threads for the image-file pass (they overlap the storage's latency).

    Zero-size boxes and boxes partly or wholly outside the image are legal (COCO has them):
    Detectron2's mapper clips them to the image and drops the empty ones
    (``filter_empty_instances``). Crowd annotations are skipped: the mapper drops them.
    A negative width or height is rejected although Detectron2 would not fail on it: its
    ``apply_box`` re-orders the corners, training on a box other than the one annotated; so is
    a non-integer ``category_id`` (``annotations_to_instances`` would truncate it with ``int``).
    """
    if len(dataset_dicts) == 0:
        raise ValueError("The training dataset is empty (after filtering images without boxes)")
    check_thing_classes(dataset_names, num_classes, num_classes_key)
    start = time.perf_counter()
    num_boxes = check_records(dataset_dicts, num_classes, num_classes_key)
    records_s = time.perf_counter() - start
    start = time.perf_counter()
    num_files = check_image_files(dataset_dicts, num_image_files, image_format, num_threads)
    logger.info(
        f"Checked {len(dataset_dicts)} training records ({num_boxes} boxes) in {records_s:.2f} s "
        f"and {num_files} image files (DATALOADER.CHECK_IMAGE_FILES {num_image_files}) in "
        f"{time.perf_counter() - start:.2f} s"
    )


def check_thing_classes(
    dataset_names: Sequence[str], num_classes: Optional[int], num_classes_key: str
) -> None:
    """
    Raise ValueError if a dataset's ``thing_classes`` (``MetadataCatalog``) are more than the
    model's ``num_classes``: Detectron2's loaders number the classes 0 .. len(thing_classes) - 1,
    so the ids past K - 1 have no output (and evaluation names the outputs with these classes).
    Fewer classes than K only warn: training works, the extra outputs are never positive.
    """
    if num_classes is None:
        return
    if isinstance(dataset_names, str):  # one name (a Python config's ``names="coco_2017_train"``)
        dataset_names = (dataset_names,)
    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is None:
            continue
        if len(classes) > num_classes:
            raise ValueError(
                f"Dataset {name!r} has {len(classes)} thing_classes but {num_classes_key} is "
                f"{num_classes}: set {num_classes_key} {len(classes)} (its category ids run "
                f"from 0 to {len(classes) - 1})"
            )
        if len(classes) < num_classes:
            logger.warning(
                f"Dataset {name!r} has {len(classes)} thing_classes and {num_classes_key} is "
                f"{num_classes}: the model's last {num_classes - len(classes)} classes are "
                f"never trained as positives"
            )


def _spread(n: int, k: int) -> np.ndarray:
    """(min(k, n),) indices spread evenly over range(n), first and last included; k < 0: all."""
    if k < 0 or k >= n:
        return np.arange(n)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


# ---------------------------------------------------------------- records
def check_records(
    dataset_dicts: Sequence[Dict],
    num_classes: Optional[int] = None,
    num_classes_key: str = "num_classes",
) -> int:
    """
    The records pass: ``file_name`` present, boxes well-formed, finite and not inverted,
    ``category_id`` an integer in [0, ``num_classes``) (None: any integer), for the non-crowd
    annotations. Returns the number of (non-crowd) boxes checked.
    """
    for index, record in enumerate(dataset_dicts):
        if "file_name" not in record:
            raise ValueError(
                f"Dataset record {index} (image id {record.get('image_id')}) has no file_name"
            )
    # Flat lists of references (no new containers: no garbage-collector passes over 860k tuples)
    counts = np.array([len(r.get("annotations", ())) for r in dataset_dicts], dtype=np.int64)
    anns = [ann for record in dataset_dicts for ann in record.get("annotations", ())]
    if not anns:
        return 0
    crowd = np.array([ann.get("iscrowd", 0) != 0 for ann in anns], dtype=bool)  # (N,)
    values, lengths = _box_matrix([ann.get("bbox") for ann in anns])  # (N, 5), (N,)
    modes = _mode_array([ann.get("bbox_mode") for ann in anns])  # (N,)
    classes = _class_array([ann.get("category_id") for ann in anns])  # (N,)
    bad_box = _bad_boxes(values, lengths, modes)  # (N,)
    bad_class = _bad_classes(classes, num_classes)  # (N,)
    bad = (bad_box | bad_class) & ~crowd  # (N,); the mapper drops crowd annotations
    if bad.any():
        first = int(np.argmax(bad))
        record = int(np.searchsorted(np.cumsum(counts), first, side="right"))
        index_in_record = first - int(counts[:record].sum())
        if bad_box[first]:
            problem = _box_problem(values[first], lengths[first], modes[first], anns[first])
        else:
            problem = _class_problem(anns[first], num_classes, num_classes_key)
        name = _image_name(dataset_dicts[record])
        raise ValueError(f"{name}, annotation {index_in_record}: {problem}")
    return int((~crowd).sum())


def _class_array(ids: List) -> np.ndarray:
    """(N,) float64 class ids; NaN for a missing, non-numeric or non-integer id."""
    array = None
    try:  # python or numpy integers (Detectron2's loaders), or tensors: one conversion
        if isinstance(ids[0], torch.Tensor):  # e.g. a converter that kept torch tensors
            array = np.asarray([c.item() for c in ids])  # faster than stacking 0-dim tensors
        else:
            with warnings.catch_warnings():  # ragged (bad) ids: the one-at-a-time route
                warnings.simplefilter("ignore")
                array = np.asarray(ids)
    except (AttributeError, TypeError, ValueError, RuntimeError, OverflowError):
        pass  # None, strings, tensors of several elements...: one at a time
    if array is not None and array.shape == (len(ids),):
        if array.dtype.kind in "iub":
            return array.astype(np.float64)
        if array.dtype.kind == "f":
            return np.where(array == np.round(array), array, np.nan)
    return np.array([_class_value(c) for c in ids], dtype=np.float64)


def _class_value(category_id) -> float:
    """An id as a float if it is an integer (python, numpy or a one-element tensor), else NaN."""
    if isinstance(category_id, torch.Tensor):
        if category_id.numel() != 1 or category_id.is_complex():
            return np.nan
        category_id = category_id.item()
    if isinstance(category_id, (str, bytes)) or category_id is None:
        return np.nan
    try:
        value = float(category_id)
    except (TypeError, ValueError):
        return np.nan
    return value if np.isfinite(value) and value == round(value) else np.nan


def _bad_classes(classes: np.ndarray, num_classes: Optional[int]) -> np.ndarray:
    """(N,) bool: not an integer, or outside [0, num_classes) (None: no upper bound)."""
    with np.errstate(invalid="ignore"):
        bad = ~(classes >= 0)  # also NaN
        if num_classes is not None:
            bad |= classes >= num_classes
    return bad


def _class_problem(ann: Dict, num_classes: Optional[int], num_classes_key: str) -> str:
    """The message for one bad ``category_id``."""
    if "category_id" not in ann or ann["category_id"] is None:
        return (
            f"annotation without 'category_id' (Detectron2's mapper needs it for every "
            f"non-crowd annotation): {ann}"
        )
    value = ann["category_id"]
    # numpy 2 shows np.int64(80): the number only
    shown = repr(value.item() if isinstance(value, np.generic) else value)
    if np.isnan(_class_value(value)):
        return f"category_id {shown} is not an integer"
    if num_classes is None:
        return f"category_id {shown} is negative (class ids run from 0)"
    return (
        f"category_id {shown} is outside [0, {num_classes}) ({num_classes_key} "
        f"{num_classes}): Detectron2's ids are contiguous from 0 (1-based ids, or a dataset "
        f"with more classes than {num_classes_key}, give this)"
    )


def _box_matrix(boxes: List) -> Tuple[np.ndarray, np.ndarray]:
    """
    Returns:
        values: (N, 5) float64, each box's first values, NaN-padded;
        lengths: (N,) int64, each box's number of values (-1: not a flat sequence of numbers).
    """
    values = np.full((len(boxes), 5), np.nan)
    array = _stacked(boxes)
    if array is not None and array.ndim == 2:
        values[:, : min(5, array.shape[1])] = array[:, :5]
        return values, np.full(len(boxes), array.shape[1], dtype=np.int64)
    # boxes of different lengths or bad boxes: one at a time
    rows = [_box_values(box) for box in boxes]
    lengths = np.array([-1 if row is None else len(row) for row in rows], dtype=np.int64)
    for k in np.unique(lengths[lengths > 0]):
        take = np.flatnonzero(lengths == k)
        values[take, : min(5, k)] = np.stack([rows[t][:5] for t in take])
    return values, lengths


def _stacked(boxes: List) -> Optional[np.ndarray]:
    """All boxes as one (N, k) float64 array when they stack in one call, else None."""
    if isinstance(boxes[0], torch.Tensor):  # e.g. a converter that kept torch tensors
        try:
            return torch.stack(boxes).detach().to("cpu", torch.float64).numpy()
        except (RuntimeError, TypeError, ValueError):
            pass  # not all tensors, or of different lengths
    try:  # python or numpy numbers (Detectron2's loaders): one call, no per-box type test
        return _as_float_array(boxes)
    except (TypeError, ValueError, RuntimeError):
        pass
    if not any(isinstance(box, torch.Tensor) for box in boxes):
        return None
    # numpy<1.24 does not stack tensors beside other boxes
    boxes = [box.tolist() if isinstance(box, torch.Tensor) else box for box in boxes]
    try:
        return _as_float_array(boxes)
    except (TypeError, ValueError, RuntimeError):
        return None


def _as_float_array(values: List) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(values, dtype=np.float64)


def _box_values(box) -> Optional[np.ndarray]:
    """A box's values as a 1-d float64 array, None if it is not a flat sequence of numbers."""
    if box is None or isinstance(box, (str, bytes, dict)):
        return None
    if isinstance(box, torch.Tensor):
        box = box.detach().cpu()
    try:
        array = np.asarray(box, np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.ndim == 1 else None


def _mode_array(modes: List) -> np.ndarray:
    """(N,) int64 box modes; -1 for a missing or unknown mode."""
    try:  # BoxMode is an IntEnum: one conversion when every mode is an int
        return np.asarray(modes, dtype=np.int64).reshape(len(modes))
    except (TypeError, ValueError):
        return np.asarray([_mode_value(m) for m in modes], dtype=np.int64)


def _mode_value(mode) -> int:
    try:
        return int(mode)
    except (TypeError, ValueError):
        return -1


def _bad_boxes(values: np.ndarray, lengths: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """(N,) bool: wrong length for the mode, unsupported mode, non-finite, or inverted."""
    expected = np.full(len(modes), -2, dtype=np.int64)
    for mode, length in _BOX_LENGTH.items():
        expected[modes == int(mode)] = length
    bad = lengths != expected  # also every unsupported mode (-2) and non-sequence box (-1)
    finite = np.isfinite(values) | (np.arange(5) >= lengths[:, None])  # padding is fine
    bad |= ~finite.all(axis=1)
    xywh = (modes == int(BoxMode.XYWH_ABS)) | (modes == int(BoxMode.XYWHA_ABS))
    xyxy = modes == int(BoxMode.XYXY_ABS)
    with np.errstate(invalid="ignore"):
        bad |= xywh & ((values[:, 2] < 0) | (values[:, 3] < 0))
        bad |= xyxy & ((values[:, 2] < values[:, 0]) | (values[:, 3] < values[:, 1]))
    return bad


def _box_problem(values: np.ndarray, length: int, mode: int, ann: Dict) -> str:
    """The message for one bad box (values: (5,), its first values)."""
    box = ann.get("bbox")
    if ann.get("bbox") is None or ann.get("bbox_mode") is None:
        missing = "bbox" if ann.get("bbox") is None else "bbox_mode"
        return f"annotation without '{missing}' (Detectron2's mapper needs both): {ann}"
    if mode not in [int(m) for m in _BOX_LENGTH]:
        return (
            f"bbox_mode {ann['bbox_mode']!r} is not one Detectron2 converts to absolute "
            f"coordinates (XYXY_ABS, XYWH_ABS, XYWHA_ABS; relative modes are not supported)"
        )
    name = BoxMode(mode).name
    if length != _BOX_LENGTH[BoxMode(mode)]:
        return (
            f"bbox {box!r} is not a sequence of {_BOX_LENGTH[BoxMode(mode)]} numbers "
            f"(bbox_mode {name})"
        )
    shown = [float(v) for v in values[:length]]
    if not np.isfinite(values[:length]).all():
        return f"bbox with a NaN/Inf coordinate: {shown} ({name})"
    return f"bbox with negative width or height: {shown} ({name})"


# ---------------------------------------------------------------- image files
def check_image_files(
    dataset_dicts: Sequence[Dict],
    num_image_files: int = -1,
    image_format: Optional[str] = None,
    num_threads: int = 8,
) -> int:
    """
    The image-file pass over ``num_image_files`` records spread evenly over the dataset (-1:
    all): raise ValueError for the first bad one in dataset order (missing, unreadable, of
    another size than annotated, of a mode that does not convert to ``image_format``). Files
    are opened by ``num_threads`` threads, which overlap the latency of remote storage.
    Returns the number of files checked.
    """
    records = [dataset_dicts[i] for i in _spread(len(dataset_dicts), num_image_files)]
    if not records:
        return 0
    check = functools.partial(_image_file_error, image_format=image_format)
    if num_threads <= 1 or len(records) < 2 * num_threads:
        first = next((e for e in map(check, records) if e is not None), None)
    else:
        with ThreadPoolExecutor(max_workers=num_threads) as pool:
            first = None
            for start in range(0, len(records), 1024):  # a bounded number of futures at a time
                block = pool.map(check, records[start : start + 1024])
                first = next((e for e in block if e is not None), None)
                if first is not None:
                    break
    if first is not None:
        raise ValueError(first)
    return len(records)


def _image_file_error(record: Dict, image_format: Optional[str]) -> Optional[str]:
    path = record["file_name"]
    name = _image_name(record)
    try:
        width, height, mode = image_size_after_exif(path)
    except FileNotFoundError:
        return f"{name}: image file not found"
    except Exception as e:
        return f"{name}: not a readable image file ({type(e).__name__}: {e})"
    if "width" in record or "height" in record:  # as detection_utils.check_image_size
        expected = (record.get("width"), record.get("height"))
        if (width, height) != expected:
            return (
                f"{name}: image is {width}x{height} (width x height, after EXIF orientation, "
                f"as Detectron2's read_image returns it) but the annotation says "
                f"{expected[0]}x{expected[1]}"
            )
    if image_format is not None and not _mode_converts(mode, image_format):
        return (
            f"{name}: image mode {mode!r} does not convert to INPUT.FORMAT {image_format!r} "
            f"(PIL Image.convert, as Detectron2's read_image does)"
        )
    return None


def image_size_after_exif(path: str) -> Tuple[int, int, str]:
    """
    (width, height, PIL mode) of the image ``detectron2.data.detection_utils.read_image``
    returns for ``path``, reading the header only: PIL's ``Image.open`` is lazy, and EXIF
    orientations 5-8 swap width and height as ``_apply_exif_orientation`` does.
    """
    with PathManager.open(path, "rb") as f:
        with Image.open(f) as image:
            width, height = image.size
            mode = image.mode
            try:  # read_image ignores unreadable EXIF the same way
                orientation = image.getexif().get(_EXIF_ORIENTATION)
            except Exception:
                orientation = None
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return width, height, mode


@functools.lru_cache(maxsize=None)
def _mode_converts(mode: str, image_format: str) -> bool:
    """Whether read_image's ``image.convert`` works from ``mode`` (tried on a 1x1 image)."""
    target = "RGB" if image_format in ("BGR", "YUV-BT.601") else image_format
    try:
        probe = Image.new(mode, (1, 1))
    except Exception:  # a mode PIL reads but cannot create: do not reject on a guess
        return True
    try:
        probe.convert(target)
    except Exception:
        return False
    return True
