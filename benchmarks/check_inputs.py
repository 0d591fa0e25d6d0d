"""By-hand benchmark of the training-data checks (``DATALOADER.CHECK_INPUTS``) at COCO scale.

Builds a synthetic dataset with COCO train2017's size (117,266 records; about 7.3 boxes each,
860k in all) and times, on one process:

- the records pass (``check_records``, boxes and class ids against COCO's 80 classes) with
  boxes as lists of python floats and ids as python ints (what Detectron2's COCO loader gives),
  as numpy scalars, and as torch tensors (numpy < 1.24 cannot stack those in one call: the
  per-box route);
- the image-file pass (``check_image_files``) over files it writes (640x480 JPEGs of 5 KB, a
  quarter with EXIF orientation 6): the default sample (``DATALOADER.CHECK_IMAGE_FILES 1000``)
  and all files, with 1 and 8 threads. PIL reads a JPEG's markers up to the frame header, not
  the compressed pixels, so the time per file hardly depends on the file's size; the files are
  in the page cache (just written);
- the same pass on simulated remote storage (a PathManager handler that sleeps 5 ms before
  each open), where the threads overlap the latency.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/check_inputs.py                 # 117,266 records and files
    OMP_NUM_THREADS=1 python benchmarks/check_inputs.py --files 10000   # fewer files written
    OMP_NUM_THREADS=1 python benchmarks/check_inputs.py --records-only --repeat 5  # no files
    git show COMMIT:anchor_free_app/data/checks.py > /tmp/checks_before.py
    OMP_NUM_THREADS=1 python benchmarks/check_inputs.py --records-only --repeat 7 \
        --baseline-checks /tmp/checks_before.py   # records pass before / after, interleaved

With ``--baseline-checks`` the records pass of that file (another commit's
``anchor_free_app/data/checks.py``) is timed too, alternating with the current one run by run
(a shared machine's load then weighs on both alike).

Writes the files under ``--workdir`` (default: a temporary folder, removed at the end; about
5 KB each: 0.6 GB for 117k) and prints a markdown table.
"""
import argparse
import importlib.util
import inspect
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from anchor_free_app.data.checks import check_image_files, check_records  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402
from detectron2.utils.file_io import PathManager  # noqa: E402
from iopath.common.file_io import PathHandler  # noqa: E402

COCO_TRAIN2017_IMAGES = 117266
COCO_TRAIN2017_BOXES = 860001
COCO_CLASSES = 80


def make_records(num_records: int, num_files: int, root: str, seed: int = 0) -> List[Dict]:
    """Records with COCO's mean box count (1-13 boxes, mean 7.3), boxes as python floats,
    class ids as python ints in [0, 80); record i points at file ``i % num_files`` (640x480, or
    480x640 in the annotation where the file carries EXIF orientation 6)."""
    rng = np.random.default_rng(seed)
    mean = COCO_TRAIN2017_BOXES / COCO_TRAIN2017_IMAGES
    counts = np.clip(rng.poisson(mean, num_records), 1, None)
    xy = rng.uniform(0, 400, (int(counts.sum()), 2))
    wh = rng.uniform(1, 200, (int(counts.sum()), 2))
    boxes = np.concatenate([xy, wh], axis=1).tolist()
    classes = rng.integers(0, COCO_CLASSES, int(counts.sum())).tolist()
    records, start = [], 0
    for i, n in enumerate(counts.tolist()):
        rotated = (i % num_files) % 4 == 0
        records.append(
            {
                "file_name": os.path.join(root, f"{i % num_files:06d}.jpg"),
                "image_id": i,
                "width": 480 if rotated else 640,
                "height": 640 if rotated else 480,
                "annotations": [
                    {"bbox": box, "bbox_mode": BoxMode.XYWH_ABS, "category_id": c, "iscrowd": 0}
                    for box, c in zip(boxes[start : start + n], classes[start : start + n])
                ],
            }
        )
        start += n
    return records


def with_number_type(records: List[Dict], convert: Callable, convert_id: Callable) -> List[Dict]:
    """The records with each box converted by ``convert`` and each class id by ``convert_id``."""
    return [
        dict(r, annotations=[
            dict(a, bbox=convert(a["bbox"]), category_id=convert_id(a["category_id"]))
            for a in r["annotations"]
        ])
        for r in records
    ]  # fmt: skip


def write_files(root: str, num_files: int) -> float:
    """Write ``num_files`` 640x480 JPEGs (every 4th with EXIF orientation 6); returns seconds."""
    start = time.perf_counter()
    blobs = []
    for orientation in (6, None):
        exif = Image.Exif()
        if orientation:
            exif[0x0112] = orientation
        buffer = io.BytesIO()
        Image.new("RGB", (640, 480), (90, 120, 150)).save(buffer, "JPEG", quality=10, exif=exif)
        blobs.append(buffer.getvalue())
    for i in range(num_files):
        with open(os.path.join(root, f"{i:06d}.jpg"), "wb") as f:
            f.write(blobs[0] if i % 4 == 0 else blobs[1])
    return time.perf_counter() - start


def timed(fn: Callable, repeat: int) -> float:
    return timed_interleaved([fn], repeat)[0]


def timed_interleaved(fns: List[Callable], repeat: int) -> List[float]:
    """Median seconds of each of ``fns``, run in turn ``repeat`` times (A B A B ...)."""
    times: List[List[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, samples in zip(fns, times):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


def load_checks(path: str):
    """The module of a ``checks.py`` file (e.g. another commit's), imported under its own name."""
    spec = importlib.util.spec_from_file_location("checks_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def records_pass(check: Callable, dataset: List[Dict]) -> Callable[[], int]:
    """``check(dataset)`` with COCO's 80 classes where ``check`` takes ``num_classes``."""
    takes_classes = "num_classes" in inspect.signature(check).parameters
    kwargs = {"num_classes": COCO_CLASSES} if takes_classes else {}
    return lambda: check(dataset, **kwargs)


class SlowStorage(PathHandler):
    """``slow://PATH`` is the local PATH opened after ``latency`` seconds: a stand-in for remote
    storage read through PathManager (only ``open``, what read_image uses)."""

    PREFIX = "slow://"
    latency = 0.005

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _open(self, path, mode="r", buffering=-1, **kwargs):
        time.sleep(self.latency)
        return open(path[len(self.PREFIX) :], mode)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=COCO_TRAIN2017_IMAGES)
    parser.add_argument("--files", type=int, default=COCO_TRAIN2017_IMAGES)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per timing of the records pass (median)")
    parser.add_argument(
        "--slow-files", type=int, default=2000, help="files opened with simulated latency"
    )
    parser.add_argument("--workdir", default=None, help="where to write the files (kept)")
    parser.add_argument("--records-only", action="store_true",
                        help="time the records pass only (no files written)")
    parser.add_argument("--baseline-checks", default=None,
                        help="a checks.py (e.g. of another commit) whose records pass is timed "
                             "too, interleaved with the current one")
    args = parser.parse_args(argv)

    root = args.workdir or tempfile.mkdtemp(prefix="check_inputs_")
    os.makedirs(root, exist_ok=True)
    try:
        records = make_records(args.records, args.files, root)
        num_boxes = sum(len(r["annotations"]) for r in records)
        rows = [("records", f"{len(records)} records, {num_boxes} boxes")]
        print(f"{len(records)} records, {num_boxes} boxes")

        def row(what: str, seconds: float) -> None:
            rows.append((what, f"{seconds:.2f} s"))
            print(f"{what}: {seconds:.2f} s", flush=True)

        checks = [check_records]
        if args.baseline_checks:
            checks.append(load_checks(args.baseline_checks).check_records)

        def records_row(what: str, dataset: List[Dict], repeat: int) -> None:
            seconds = timed_interleaved([records_pass(c, dataset) for c in checks], repeat)
            text = " / ".join(f"{t:.2f} s" for t in seconds)
            if len(checks) > 1:
                what += " (current / baseline)"
            rows.append((what, text))
            print(f"{what}: {text}", flush=True)

        records_row("records pass, python floats and ints", records, args.repeat)
        np_records = with_number_type(records, lambda b: [np.float32(v) for v in b], np.int64)
        records_row("records pass, numpy float32 / int64 scalars", np_records, args.repeat)
        del np_records
        t_records = with_number_type(records, torch.tensor, torch.tensor)
        records_row("records pass, torch tensors", t_records, args.repeat)
        del t_records
        if args.records_only:
            _print_table(rows)
            return
        print(f"writing {args.files} files to {root}")
        write_s = write_files(root, args.files)
        print(f"files written in {write_s:.1f} s")
        for files, threads in ((1000, 8), (-1, 1), (-1, 8)):
            what = (
                f"image files: {'all ' + str(len(records)) if files < 0 else files} of "
                f"{len(records)} records, {threads} thread{'s' if threads > 1 else ''}"
            )
            row(what, timed(lambda: check_image_files(records, files, "BGR", threads), 1))
        PathManager.register_handler(SlowStorage())
        slow = [dict(r, file_name=SlowStorage.PREFIX + r["file_name"]) for r in records]
        latency_ms = SlowStorage.latency * 1000
        for threads in (1, 8, 32):
            what = (
                f"image files: {args.slow_files} of {len(records)} records on storage with "
                f"{latency_ms:.0f} ms latency, {threads} thread{'s' if threads > 1 else ''}"
            )
            run = lambda: check_image_files(slow, args.slow_files, "BGR", threads)  # noqa: E731
            row(what, timed(run, 1))
        _print_table(rows)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def _print_table(rows: List) -> None:
    print("\n| pass | time |\n|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")


if __name__ == "__main__":
    main()
