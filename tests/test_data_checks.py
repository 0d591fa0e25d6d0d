"""The training-data checks (DATALOADER.CHECK_INPUTS): bad records and image files get an error
naming the image and the problem; nothing Detectron2's mapper trains on is rejected (numpy and
torch numbers, EXIF-rotated, grayscale, RGBA, 16-bit and CMYK images, non-local storage); the
check runs once, on the main process, and every process gets its verdict."""
import json
import os
import tempfile
from datetime import timedelta

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import AA_DEMO, PIOU_DEMO, REPO_ROOT, TINY_DATA, TINY_DATA_PYTHON
from iopath.common.file_io import PathHandler
from PIL import Image

from anchor_free_app.config import get_project_cfg, run_settings, setup_cfg, setup_python_cfg
from anchor_free_app.data import checks
from anchor_free_app.data.checks import (
    check_dataset_dicts,
    check_records,
    image_size_after_exif,
    run_on_main_process,
)
from anchor_free_app.engine import PythonConfigTrainer, Trainer
from detectron2.data.datasets import register_coco_instances
from detectron2.data.detection_utils import read_image
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager


RETINANET_DEMO = os.path.join(REPO_ROOT, "configs", "demo", "retinanet_R_18_FPN_demo.yaml")


# ---------------------------------------------------------------- records
@pytest.fixture
def image_file(tmp_path):
    path = str(tmp_path / "img.png")
    cv2.imwrite(path, np.zeros((20, 30, 3), np.uint8))
    return path


def _record(path, box, mode=BoxMode.XYWH_ABS, **extra):
    record = {"file_name": path, "image_id": 7, "height": 20, "width": 30}
    record.update(extra)
    record["annotations"] = [{"bbox": box, "bbox_mode": mode, "category_id": 0}]
    return record


def test_valid_record_passes(image_file):
    check_dataset_dicts([_record(image_file, [1, 2, 3, 4])])
    # zero-size and outside-the-image boxes are legal: Detectron2's mapper clips and drops them
    check_dataset_dicts([_record(image_file, [50, 50, 0, 0])])
    check_dataset_dicts([_record(image_file, [3, 3, 3, 3], BoxMode.XYXY_ABS)])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p, tmp: _record(str(tmp / "missing.png"), [1, 2, 3, 4]), "image file not found"),
        (lambda p, tmp: _record(_garbage(tmp), [1, 2, 3, 4]), "not a readable image"),
        (lambda p, tmp: _record(p, [1, 2, 3, 4], height=21), "30x20 .* annotation says 30x21"),
        (lambda p, tmp: _record(p, [1, float("nan"), 3, 4]), r"NaN/Inf coordinate: \[1.0, nan"),
        (lambda p, tmp: _record(p, [1, 2, float("inf"), 4]), "NaN/Inf"),
        (lambda p, tmp: _record(p, [1, 2, -3, 4]), "negative width or height"),
        (lambda p, tmp: _record(p, [5, 2, 3, 4], BoxMode.XYXY_ABS), "negative width or height"),
        (lambda p, tmp: _record(p, [1, 2, 3]), r"not a sequence of 4 numbers \(bbox_mode XYWH_ABS"),
        (lambda p, tmp: _record(p, [1, 2, 3, 4], BoxMode.XYWHA_ABS), "sequence of 5 numbers"),
        (lambda p, tmp: _record(p, None), "annotation without 'bbox'"),
        (lambda p, tmp: _record(p, [1, 2, "x", 4]), "not a sequence of 4 numbers"),
        (lambda p, tmp: _record(p, [1, 2, 3, 4], BoxMode.XYWH_REL), "relative modes"),
        (lambda p, tmp: _record(p, [1, 2, 3, 4], 17), "bbox_mode 17"),
    ],
)
def test_bad_records_name_image_and_problem(image_file, tmp_path, make, message):
    with pytest.raises(ValueError, match=message) as e:
        check_dataset_dicts([_record(image_file, [0, 0, 1, 1]), make(image_file, tmp_path)])
    assert "image id 7" in str(e.value)


def test_missing_bbox_mode_and_file_name_are_named(image_file):
    record = _record(image_file, [1, 2, 3, 4])
    del record["annotations"][0]["bbox_mode"]
    with pytest.raises(ValueError, match="annotation without 'bbox_mode'"):
        check_records([record])
    with pytest.raises(ValueError, match="record 1 .*image id 5.* has no file_name"):
        check_records([_record(image_file, [1, 2, 3, 4]), {"image_id": 5}])


def _garbage(tmp):
    path = str(tmp / "corrupt.jpg")
    with open(path, "wb") as f:
        f.write(b"this is not a jpeg")
    return path


SCALAR_BOXES = {
    "numpy float32": [np.float32(1.5), np.float32(2), np.float32(3), np.float32(4)],
    "numpy int64": [np.int64(1), np.int64(2), np.int64(3), np.int64(4)],
    "numpy float64 array": np.array([1.0, 2.0, 3.0, 4.0]),
    "numpy int32 array": np.array([1, 2, 3, 4], np.int32),
    "torch scalars": [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3), torch.tensor(4)],
    "torch tensor": torch.tensor([1.0, 2.0, 3.0, 4.0]),
    "tuple of mixed": (1, np.float32(2.0), torch.tensor(3.0), 4.0),
}


@pytest.mark.parametrize("kind", list(SCALAR_BOXES))
def test_numpy_and_torch_numbers_are_accepted(image_file, kind):
    """What dataset converters write; Detectron2's BoxMode.convert and mapper take them."""
    box = SCALAR_BOXES[kind]
    check_dataset_dicts([_record(image_file, box)])  # alone (one box type: one numpy call)
    mixed = [_record(image_file, [0, 0, 5, 5]), _record(image_file, box)]
    check_dataset_dicts(mixed)  # beside python floats
    if kind in NAN_BOXES:
        with pytest.raises(ValueError, match=r"image id 7.*NaN/Inf coordinate: \[nan, 2.0"):
            check_dataset_dicts(mixed + [_record(image_file, NAN_BOXES[kind])])


NAN_BOXES = {
    "numpy float32": [np.float32("nan"), np.float32(2), np.float32(3), np.float32(4)],
    "torch scalars": [torch.tensor(float("nan")), torch.tensor(2.0), torch.tensor(3), 4],
    "torch tensor": torch.tensor([float("nan"), 2.0, 3.0, 4.0]),
}


def test_rotated_boxes_and_crowd_annotations(image_file):
    # XYWHA_ABS boxes have 5 numbers (BoxMode.convert turns them into XYXY_ABS)
    check_records([_record(image_file, [10, 10, 4, 2, 30.0], BoxMode.XYWHA_ABS)])
    with pytest.raises(ValueError, match="negative width"):
        check_records([_record(image_file, [10, 10, -4, 2, 30.0], BoxMode.XYWHA_ABS)])
    # tensors of both lengths together (they do not stack: one at a time)
    records = [
        _record(image_file, torch.tensor([1.0, 2.0, 3.0, 4.0])),
        _record(image_file, torch.tensor([10.0, 10.0, 4.0, 2.0, 30.0]), BoxMode.XYWHA_ABS),
    ]
    assert check_records(records) == 2
    with pytest.raises(ValueError, match=r"tensor\(\[1., 2., 3.\]\) is not a sequence of 4"):
        check_records(records + [_record(image_file, torch.tensor([1.0, 2.0, 3.0]))])
    # crowd annotations are dropped by the mapper: not checked
    record = _record(image_file, [1, 2, 3, 4])
    record["annotations"].append({"bbox": [float("nan")] * 4, "iscrowd": 1, "category_id": 0})
    assert check_records([record]) == 1
    # the error names the right record and annotation after records with several boxes
    records = [_record(image_file, [0, 0, 1, 1]) for _ in range(3)]
    records[1]["image_id"] = 8
    records[1]["annotations"] = records[1]["annotations"] * 3 + [
        {"bbox": [1, 1, -1, 1], "bbox_mode": BoxMode.XYWH_ABS}
    ]
    with pytest.raises(ValueError, match="image id 8 .*annotation 3: bbox with negative"):
        check_records(records)


# ---------------------------------------------------------------- image files
def _write(tmp_path, name, mode, size=(60, 40), orientation=None, array=None):
    image = Image.fromarray(array) if array is not None else Image.new(mode, size)
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    path = str(tmp_path / name)
    image.save(path, **kwargs)
    return path


IMAGES = {  # name: (file, mode, orientation, uint16 pixels)
    "EXIF orientation 6 (phones)": ("exif6.jpg", "RGB", 6, False),
    "EXIF orientation 8": ("exif8.jpg", "RGB", 8, False),
    "EXIF orientation 3 (no swap)": ("exif3.jpg", "RGB", 3, False),
    "EXIF orientation 6 PNG": ("exif6.png", "RGB", 6, False),
    "grayscale JPEG": ("gray.jpg", "L", None, False),
    "grayscale PNG": ("gray.png", "L", None, False),
    "PNG with alpha": ("rgba.png", "RGBA", None, False),
    "16-bit PNG": ("depth16.png", None, None, True),
    "CMYK JPEG": ("cmyk.jpg", "CMYK", None, False),
    "palette PNG": ("palette.png", "P", None, False),
}


@pytest.mark.parametrize("kind", list(IMAGES))
def test_image_files_detectron2_reads_are_accepted_with_its_size(tmp_path, kind):
    """The size the check expects is the one Detectron2's read_image returns (EXIF applied)."""
    name, mode, orientation, sixteen_bit = IMAGES[kind]
    pixels = np.arange(40 * 60, dtype=np.uint16).reshape(40, 60) * 20 if sixteen_bit else None
    path = _write(tmp_path, name, mode, orientation=orientation, array=pixels)
    try:
        height, width = read_image(path, format="BGR").shape[:2]
    except Exception as e:  # Detectron2 cannot read it: the check may reject it, clearly
        with pytest.raises(ValueError, match="image id 7"):
            check_dataset_dicts([_record(path, [1, 2, 3, 4])], image_format="BGR")
        pytest.skip(f"read_image fails on {kind} with this Pillow: {e}")
    swapped = orientation in (5, 6, 7, 8)
    assert (width, height) == ((40, 60) if swapped else (60, 40))  # what the test is about
    assert image_size_after_exif(path)[:2] == (width, height)
    check_dataset_dicts(
        [_record(path, [1, 2, 3, 4], width=width, height=height)], image_format="BGR"
    )
    with pytest.raises(ValueError, match=f"is {width}x{height} .*annotation says {height}x{width}"):
        check_dataset_dicts([_record(path, [1, 2, 3, 4], width=height, height=width)])


def test_records_without_size_are_not_size_checked(image_file):
    record = _record(image_file, [1, 2, 3, 4])
    del record["width"], record["height"]
    check_dataset_dicts([record])  # the mapper takes the size from the image


class _MappedHandler(PathHandler):
    """A non-local storage for the test: ``d2checks-test://NAME`` is ``ROOT/NAME``; it
    implements only what read_image uses (open), like many remote handlers."""

    PREFIX = "d2checks-test://"
    root = ""

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _open(self, path, mode="r", buffering=-1, **kwargs):
        return open(os.path.join(self.root, path[len(self.PREFIX) :]), mode)


_HANDLER = _MappedHandler()
PathManager.register_handler(_HANDLER)


def test_paths_on_storage_detectron2_reads_through_pathmanager(tmp_path, monkeypatch):
    monkeypatch.setattr(_MappedHandler, "root", str(tmp_path))
    path = _write(tmp_path, "remote.jpg", "RGB", orientation=6)
    uri = _MappedHandler.PREFIX + os.path.basename(path)
    assert not os.path.exists(uri)
    assert read_image(uri).shape[:2] == (60, 40)  # Detectron2 reads it
    check_dataset_dicts([_record(uri, [1, 2, 3, 4], width=40, height=60)])
    with pytest.raises(ValueError, match="missing.jpg.*image file not found"):
        check_dataset_dicts([_record(_MappedHandler.PREFIX + "missing.jpg", [1, 2, 3, 4])])


def test_image_files_sampled_evenly_or_all_in_dataset_order(image_file, tmp_path):
    assert checks._spread(10, 3).tolist() == [0, 4, 9]
    assert checks._spread(3, 1000).tolist() == [0, 1, 2]
    assert checks._spread(10, -1).tolist() == list(range(10))
    assert checks._spread(10, 0).tolist() == []
    records = [_record(image_file, [1, 2, 3, 4], image_id=i) for i in range(40)]
    records[13]["file_name"] = str(tmp_path / "missing13.png")
    records[27]["file_name"] = str(tmp_path / "missing27.png")
    check_dataset_dicts(records, num_image_files=3)  # opens records 0, 20 (19.5 rounded), 39
    check_dataset_dicts(records, num_image_files=0)
    for threads in (1, 4):  # threads still report the first bad record in dataset order
        with pytest.raises(ValueError, match="image id 13 .*missing13.png.*not found"):
            check_dataset_dicts(records, num_image_files=-1, num_threads=threads)
    # past the first block of 1024 files the threads take at a time
    records = [_record(image_file, [1, 2, 3, 4], image_id=i) for i in range(1100)]
    for i in (1090, 1050):
        records[i]["file_name"] = str(tmp_path / f"missing{i}.png")
    with pytest.raises(ValueError, match="image id 1050 .*missing1050.png.*not found"):
        checks.check_image_files(records, num_threads=4)
    assert checks.check_image_files(records[:1000], num_threads=4) == 1000
    assert checks.check_image_files(records, num_image_files=5) == 5


# ---------------------------------------------------------------- once, on the main process
def test_only_the_main_process_checks_and_others_get_its_verdict(monkeypatch):
    calls = []

    def check():
        calls.append(1)
        raise ValueError("image id 3 (x.jpg): image file not found")

    monkeypatch.setattr(checks.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(checks.comm, "is_main_process", lambda: False)
    monkeypatch.setattr(checks.comm, "all_gather", lambda error: ["ValueError: from rank 0", error])
    with pytest.raises(ValueError, match="failed on the main process: ValueError: from rank 0"):
        run_on_main_process(check)
    assert calls == []  # this (non-main) process did not run it
    monkeypatch.setattr(checks.comm, "all_gather", lambda error: [None, error])
    run_on_main_process(check)  # main's verdict: fine
    monkeypatch.setattr(checks.comm, "is_main_process", lambda: True)
    monkeypatch.setattr(checks.comm, "all_gather", lambda error: [error, None])
    with pytest.raises(ValueError, match="^image id 3 "):  # main raises its own error
        run_on_main_process(check)
    assert calls == [1]


def _gloo_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
        timeout=timedelta(seconds=60),
    )  # fmt: skip
    outcome = []
    try:
        for fails in (True, False):

            def check():
                outcome.append(f"rank {rank} ran the check")
                if fails:
                    raise ValueError(f"bad record seen by rank {rank}")

            try:
                run_on_main_process(check)
                outcome.append("passed")
            except ValueError as e:
                outcome.append(str(e))
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
        json.dump(outcome, f)


def test_two_gloo_workers_share_the_main_process_verdict():
    # fork: the workers need nothing but this module's imports (0.3 s instead of half a minute
    # of re-imports per spawned worker on a loaded 2-core machine)
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            _gloo_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=2, start_method="fork"
        )
        outcomes = [json.load(open(os.path.join(tmp, f"{r}.json"))) for r in range(2)]
    assert outcomes[0] == [
        "rank 0 ran the check", "bad record seen by rank 0", "rank 0 ran the check", "passed",
    ]  # fmt: skip
    assert outcomes[1] == [
        "The training data check failed on the main process: ValueError: bad record seen by "
        "rank 0",
        "passed",
    ]


# ---------------------------------------------------------------- in the trainer
def test_config_checks_a_sample_of_image_files_by_default():
    cfg = get_project_cfg()
    assert cfg.DATALOADER.CHECK_INPUTS is True
    assert cfg.DATALOADER.CHECK_IMAGE_FILES == 1000


def test_corrupt_image_in_dataset_fails_before_training(tmp_path):
    _garbage(tmp_path)
    annotations = {
        "images": [{"id": 3, "file_name": "corrupt.jpg", "height": 20, "width": 30}],
        "annotations": [
            {"id": 1, "image_id": 3, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "a"}],
    }
    with open(tmp_path / "ann.json", "w") as f:
        json.dump(annotations, f)
    register_coco_instances("test_corrupt_image", {}, str(tmp_path / "ann.json"), str(tmp_path))
    cfg = setup_cfg(
        PIOU_DEMO,
        TINY_DATA + ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "('test_corrupt_image',)"],
        freeze=False,
    )
    with pytest.raises(ValueError, match="image id 3.*corrupt.jpg.*not a readable image"):
        Trainer.build_train_loader(cfg)


# ---------------------------------------------------------------- class ids
def _with_class(path, category_id, **ann):
    record = _record(path, [1, 2, 3, 4])
    if category_id is _MISSING:
        del record["annotations"][0]["category_id"]
    else:
        record["annotations"][0]["category_id"] = category_id
    record["annotations"][0].update(ann)
    return record


_MISSING = object()
GOOD_IDS = {
    "python int": 2, "zero": 0, "float with an integer value": 2.0, "numpy int64": np.int64(2),
    "numpy uint8": np.uint8(1), "numpy float32": np.float32(2), "torch int": torch.tensor(2),
    "torch float": torch.tensor(1.0), "torch 1-element": torch.tensor([2]),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(GOOD_IDS))
def test_integer_class_ids_below_num_classes_are_accepted(image_file, kind):
    record = _with_class(image_file, GOOD_IDS[kind])
    assert check_records([record], num_classes=3) == 1
    mixed = [_with_class(image_file, 1), record, _with_class(image_file, 0)]
    assert check_records(mixed, num_classes=3) == 3  # beside python ints: one at a time
    assert check_records([record] * 3, num_classes=3) == 3  # alone: one conversion


BAD_IDS = {  # id: (message, also bad without num_classes)
    "1-based (= NUM_CLASSES)": (3, r"category_id 3 is outside \[0, 3\) \(MODEL.X.NUM_CLASSES 3\)",
                                False),
    "far above": (np.int64(80), r"category_id 80 is outside \[0, 3\)", False),
    "negative": (-1, r"category_id -1 is outside \[0, 3\)", True),
    "missing": (_MISSING, "annotation without 'category_id'", True),
    "None": (None, "annotation without 'category_id'", True),
    "fraction": (1.5, "category_id 1.5 is not an integer", True),
    "NaN": (float("nan"), "category_id nan is not an integer", True),
    "string": ("2", "category_id '2' is not an integer", True),
    "tensor of two": (torch.tensor([1, 2]), r"category_id tensor\(\[1, 2\]\) is not an integer",
                      True),
    "torch fraction": (torch.tensor(0.5), r"category_id tensor\(0.5000\) is not an integer",
                       True),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(BAD_IDS))
def test_bad_class_ids_name_image_annotation_and_config_key(image_file, kind):
    """Missing ids fail in a loader worker (KeyError), ids >= NUM_CLASSES at the iteration that
    first draws the image: here, before training, with the image, annotation and key."""
    value, message, bad_without_k = BAD_IDS[kind]
    records = [_with_class(image_file, 0, image_id=i) for i in range(3)]
    records[1]["image_id"] = 8
    records[1]["annotations"] = records[1]["annotations"] * 2 + _with_class(
        image_file, value)["annotations"]
    with pytest.raises(ValueError, match=f"image id 8 .*annotation 2: {message}"):
        check_records(records, num_classes=3, num_classes_key="MODEL.X.NUM_CLASSES")
    if bad_without_k:  # a model whose number of classes is not known
        with pytest.raises(ValueError, match="image id 8 .*annotation 2: "):
            check_records(records)
    else:
        assert check_records(records) == 5
    with pytest.raises(ValueError, match="image id 8 .*annotation 2: .*(category_id|annotation)"):
        check_dataset_dicts(records, num_classes=3, num_image_files=0)


def test_crowd_and_empty_records_are_not_rejected_for_their_classes(image_file):
    """The mapper drops crowd annotations (their category_id is never read); records without
    annotations (FILTER_EMPTY_ANNOTATIONS False) have nothing to check."""
    records = [
        _with_class(image_file, 99, iscrowd=1),
        _with_class(image_file, _MISSING, iscrowd=1),
        _record(image_file, [1, 2, 3, 4], image_id=9),
        dict(_record(image_file, [1, 2, 3, 4]), annotations=[]),
        {k: v for k, v in _record(image_file, [1, 2, 3, 4]).items() if k != "annotations"},
    ]
    assert check_records(records, num_classes=1) == 1
    check_dataset_dicts(records, num_classes=1, num_image_files=0)
    records[2]["annotations"][0]["category_id"] = 1
    with pytest.raises(ValueError, match=r"image id 9 .*annotation 0: category_id 1 is outside"):
        check_records(records, num_classes=1)
    # the first bad annotation in dataset order, whether its box or its class is bad
    records[1]["annotations"].append({"bbox": [1, 1, -1, 1], "bbox_mode": BoxMode.XYWH_ABS})
    records[1]["image_id"] = 4
    with pytest.raises(ValueError, match="image id 4 .*annotation 1: bbox with negative"):
        check_records(records, num_classes=1)


def test_thing_classes_longer_than_num_classes_are_rejected(image_file, caplog):
    from detectron2.data import MetadataCatalog

    MetadataCatalog.get("test_checks_four_classes").thing_classes = ["a", "b", "c", "d"]
    records = [_with_class(image_file, 1)]
    names = ("test_checks_four_classes",)
    with pytest.raises(
        ValueError,
        match="Dataset 'test_checks_four_classes' has 4 thing_classes but "
        "MODEL.AUTOASSIGN.NUM_CLASSES is 3: set MODEL.AUTOASSIGN.NUM_CLASSES 4",
    ):
        check_dataset_dicts(records, num_classes=3, num_classes_key="MODEL.AUTOASSIGN.NUM_CLASSES",
                            dataset_names=names, num_image_files=0)  # fmt: skip
    with pytest.raises(ValueError, match="'test_checks_four_classes' has 4 thing_classes"):
        check_dataset_dicts(records, num_classes=3, dataset_names=names[0], num_image_files=0)
    check_dataset_dicts(records, num_classes=4, dataset_names=names, num_image_files=0)
    check_dataset_dicts(records, dataset_names=names, num_image_files=0)  # K unknown
    # fewer classes than the model's: trains (its extra outputs are never positive); a warning
    with caplog.at_level("WARNING", logger=checks.logger.name):
        check_dataset_dicts(records, num_classes=6, dataset_names=names, num_image_files=0)
    assert "has 4 thing_classes and num_classes is 6" in caplog.text
    check_dataset_dicts(records, num_classes=6, dataset_names=("test_checks_no_metadata",),
                        num_image_files=0)  # fmt: skip


@pytest.mark.parametrize(
    "config, key",
    [
        (PIOU_DEMO, "MODEL.PSEUDO_IOU.NUM_CLASSES"),
        (AA_DEMO, "MODEL.AUTOASSIGN.NUM_CLASSES"),
        (RETINANET_DEMO, "MODEL.RETINANET.NUM_CLASSES"),
    ],
)
def test_yacs_wrapper_takes_num_classes_of_the_meta_architecture(config, key, tmp_path):
    """NUM_CLASSES from the key of MODEL.META_ARCHITECTURE; DATASETS.TRAIN's thing_classes (the
    demo dataset's 4 shapes) compared with it."""
    cfg = setup_cfg(config, TINY_DATA + ["MODEL.DEVICE", "cpu", key, "4"], freeze=False)
    settings = run_settings(cfg)
    assert (settings.num_classes, settings.num_classes_key) == (4, key)
    path = str(tmp_path / "img.png")
    cv2.imwrite(path, np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(ValueError, match=rf"image id 7 .*outside \[0, 4\) \({key} 4\)"):
        checks.check_training_data([_with_class(path, 4)], settings)
    checks.check_training_data([_with_class(path, 3)], settings)
    cfg.merge_from_list([key, 3])
    with pytest.raises(ValueError, match=f"'demo_shapes_train' has 4 thing_classes but {key} is 3"):
        checks.check_training_data([_with_class(path, 0)], run_settings(cfg))
    cfg.MODEL.META_ARCHITECTURE = "SomeoneElsesDetector"
    settings = run_settings(cfg)
    assert settings.num_classes is None
    checks.check_training_data([_with_class(path, 4)], settings)  # K unknown: not range-checked


def test_coco_dataset_with_more_categories_than_the_model_fails_before_training(tmp_path):
    """The most common custom-dataset mistake: a COCO json with more categories than the
    config's NUM_CLASSES (Detectron2's loader numbers them 0..N-1)."""
    cv2.imwrite(str(tmp_path / "img.png"), np.zeros((20, 30, 3), np.uint8))
    annotations = {
        "images": [{"id": 3, "file_name": "img.png", "height": 20, "width": 30}],
        "annotations": [
            {"id": 1, "image_id": 3, "category_id": 5, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}
        ],
        "categories": [{"id": k, "name": f"c{k}"} for k in range(1, 6)],
    }
    with open(tmp_path / "ann.json", "w") as f:
        json.dump(annotations, f)
    register_coco_instances("test_five_classes", {}, str(tmp_path / "ann.json"), str(tmp_path))
    cfg = setup_cfg(
        AA_DEMO,
        TINY_DATA + ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "('test_five_classes',)"],
        freeze=False,
    )
    with pytest.raises(ValueError, match="5 thing_classes but MODEL.AUTOASSIGN.NUM_CLASSES is 4"):
        Trainer.build_train_loader(cfg)


def test_python_config_training_checks_class_ids_against_model_num_classes():
    """The Python-config trainer runs the same check, naming the Python attribute."""
    config = os.path.join(REPO_ROOT, "configs", "PseudoIoU", "pseudo_iou_R_18_FPN_demo.py")
    cfg = setup_python_cfg(config, TINY_DATA_PYTHON + ["model.num_classes=3"])
    with pytest.raises(ValueError, match="'demo_shapes_train' has 4 thing_classes but "
                                         "model.num_classes is 3"):  # fmt: skip
        PythonConfigTrainer.build_train_loader(cfg)
    cfg.model.num_classes = 4
    PythonConfigTrainer.build_train_loader(cfg)  # the demo data passes
