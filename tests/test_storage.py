"""OUTPUT_DIR on any storage Detectron2's PathManager has a handler for: checkpoints,
last_checkpoint, metrics.json (and its repair on --resume), log, config, tensorboard events and
evaluation results go through PathManager; only local files are written with a temporary file and
a rename. The storage here is a real iopath PathHandler registered for the prefix ``testfs://``
and mapping it onto a temporary folder, as an ``s3://`` or ``manifold://`` handler maps its
prefix onto its store.

Run as a script, this file registers the handler (root folder: first argument) and then runs
``train_net.py`` with the remaining arguments, so that training, kill, ``--resume`` and
``--eval-only`` go through the prefix in a subprocess.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import List

from iopath.common.file_io import PathHandler

from detectron2.utils.file_io import PathManager

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "testfs://"


class MappedPathHandler(PathHandler):
    """``testfs://a/b`` is the file ``a/b`` of a root folder. Not iopath's NativePathHandler, so
    the project must reach it through ``PathManager`` (a plain ``open("testfs://a/b")`` fails)."""

    def __init__(self, root: str):
        super().__init__()
        self.root = root
        self.opened: List[str] = []  # paths opened for writing, in order

    def _get_supported_prefixes(self) -> List[str]:
        return [PREFIX]

    def _local(self, path: str) -> str:
        return os.path.join(self.root, path[len(PREFIX):])

    def _get_local_path(self, path: str, force: bool = False, **kwargs) -> str:
        return self._local(path)  # a remote handler downloads to a cache; here it is the file

    def _copy_from_local(self, local_path: str, dst_path: str, overwrite: bool = False, **kwargs):
        shutil.copyfile(local_path, self._local(dst_path))

    def _open(self, path: str, mode: str = "r", buffering: int = -1, **kwargs):
        local = self._local(path)
        if any(c in mode for c in "wax"):
            os.makedirs(os.path.dirname(local), exist_ok=True)  # object stores have no folders
            self.opened.append(path)
        return open(local, mode, buffering=buffering)

    def _exists(self, path: str, **kwargs) -> bool:
        return os.path.exists(self._local(path))

    def _isfile(self, path: str, **kwargs) -> bool:
        return os.path.isfile(self._local(path))

    def _isdir(self, path: str, **kwargs) -> bool:
        return os.path.isdir(self._local(path))

    def _ls(self, path: str, **kwargs) -> List[str]:
        return os.listdir(self._local(path))

    def _mkdirs(self, path: str, **kwargs) -> None:
        os.makedirs(self._local(path), exist_ok=True)

    def _rm(self, path: str, **kwargs) -> None:
        os.remove(self._local(path))


if __name__ == "__main__":  # python tests/test_storage.py ROOT train_net.py-arguments...
    PathManager.register_handler(MappedPathHandler(sys.argv[1]))
    sys.path.insert(0, REPO_ROOT)
    import train_net

    train_net.invoke_main(sys.argv[2:])
    sys.exit(0)


import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from common import PIOU_DEMO, TINY_DATA  # noqa: E402

from anchor_free_app.checkpoint import (  # noqa: E402
    SafeDetectionCheckpointer,
    is_local_path,
    repair_metrics_file,
    write_file,
)
from anchor_free_app.config import setup_cfg  # noqa: E402
from anchor_free_app.engine import Trainer  # noqa: E402

_HANDLER = MappedPathHandler("")
PathManager.register_handler(_HANDLER)


@pytest.fixture
def storage(tmp_path):
    """The handler, its root a fresh folder."""
    _HANDLER.root = str(tmp_path / "storage")
    os.makedirs(_HANDLER.root)
    _HANDLER.opened.clear()
    return _HANDLER


def test_local_paths_and_handler_paths_are_told_apart(tmp_path):
    assert is_local_path(str(tmp_path / "out"))
    assert is_local_path("output/run")
    assert not is_local_path(f"{PREFIX}out/model_final.pth")


def test_local_write_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / "last_checkpoint")
    write_file(path, lambda f: f.write(b"model_0000004.pth"))

    def fail_half_way(f):
        f.write(b"model_00")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_file(path, fail_half_way)
    with open(path, "rb") as f:
        assert f.read() == b"model_0000004.pth"  # the old file, whole
    assert os.listdir(tmp_path) == ["last_checkpoint"]


def test_checkpointer_and_metrics_repair_through_the_handler(storage, tmp_path):
    model = torch.nn.Linear(2, 1)
    checkpointer = SafeDetectionCheckpointer(model, f"{PREFIX}run")
    checkpointer.save("model_0000004", iteration=4)
    assert storage.opened == [f"{PREFIX}run/model_0000004.pth", f"{PREFIX}run/last_checkpoint"]
    assert checkpointer.has_checkpoint()
    assert checkpointer.get_checkpoint_file() == f"{PREFIX}run/model_0000004.pth"
    restored = SafeDetectionCheckpointer(torch.nn.Linear(2, 1), f"{PREFIX}run", strict=True)
    assert restored.resume_or_load("", resume=True)["iteration"] == 4
    torch.testing.assert_close(restored.model.weight, model.weight)

    metrics = os.path.join(storage.root, "run", "metrics.json")
    with open(metrics, "w") as f:
        f.write("".join(json.dumps({"iteration": i}) + "\n" for i in range(8)) + '{"itera')
    assert repair_metrics_file(f"{PREFIX}run/metrics.json", resume_iter=5)
    with open(metrics) as f:
        assert [json.loads(line)["iteration"] for line in f] == [0, 1, 2, 3, 4]
    assert not repair_metrics_file(f"{PREFIX}run/metrics.json", resume_iter=5)  # nothing to do
    assert sorted(os.listdir(os.path.join(storage.root, "run"))) == [
        "last_checkpoint", "metrics.json", "model_0000004.pth"
    ]  # fmt: skip


def _trainer(output_dir, max_iter):
    opts = TINY_DATA + ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "1000",
                        "OUTPUT_DIR", output_dir, "DATASETS.TEST", "()"]  # fmt: skip
    return Trainer(setup_cfg(PIOU_DEMO, opts))


def test_metrics_written_after_a_resume_that_repaired_the_file(tmp_path):
    """The repair replaces metrics.json on a local disk; Detectron2's JSONWriter, opened on the
    old file before the resume, must write to the new one."""
    out = str(tmp_path / "run")
    trainer = _trainer(out, 3)
    trainer.resume_or_load(resume=False)
    trainer.train()  # metrics of iteration 2 written at the end; model_final.pth at iteration 2
    with open(os.path.join(out, "metrics.json"), "a") as f:  # as if iterations 3-6 had run
        f.write("".join(json.dumps({"iteration": i}) + "\n" for i in range(3, 7)) + '{"itera')
    resumed = _trainer(out, 5)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    resumed.train()
    with open(os.path.join(out, "metrics.json")) as f:
        assert [json.loads(line)["iteration"] for line in f] == [2, 4]


def _train_net(root, args, cwd, **popen):
    cmd = [sys.executable, os.path.abspath(__file__), str(root), "--config-file", PIOU_DEMO]
    return subprocess.Popen(cmd + args + TINY_DATA, cwd=cwd, **popen)


def test_train_kill_resume_and_eval_only_on_the_prefix(tmp_path):
    root, cwd = tmp_path / "storage", tmp_path / "cwd"
    cwd.mkdir()
    run_dir = root / "run"
    args = ["SOLVER.MAX_ITER", "40", "SOLVER.CHECKPOINT_PERIOD", "15", "DATASETS.TEST", "()",
            "OUTPUT_DIR", f"{PREFIX}run"]  # fmt: skip
    proc = _train_net(root, args, cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                      start_new_session=True)  # fmt: skip
    deadline = time.time() + 300

    def logged(iteration):
        try:
            with open(run_dir / "metrics.json") as f:
                return f'"iteration": {iteration}' in f.read()
        except FileNotFoundError:
            return False

    try:
        while not logged(19):  # metrics of iteration 19 written; last checkpoint: iteration 14
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline, "no metrics after 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    last = (run_dir / "last_checkpoint").read_text()
    resume_from = torch.load(run_dir / last, map_location="cpu", weights_only=False)["iteration"] + 1
    assert not (run_dir / "model_final.pth").exists()
    with open(run_dir / "metrics.json", "a") as f:
        f.write('{"iteration": 2')  # and a line cut by the kill

    resume = _train_net(root, ["--resume"] + args, cwd, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)  # fmt: skip
    log = resume.communicate(timeout=600)[0]
    assert resume.returncode == 0, log[-5000:]
    assert f"Starting training from iteration {resume_from}" in log
    with open(run_dir / "metrics.json") as f:
        iterations = [json.loads(line)["iteration"] for line in f]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 39 and 19 in iterations
    files = set(os.listdir(run_dir))
    assert {"model_final.pth", "last_checkpoint", "log.txt", "config.yaml"} <= files
    assert any(f.startswith("events.out.tfevents.") for f in files)  # tensorboard, copied
    assert (run_dir / "last_checkpoint").read_text() == "model_final.pth"

    evaluate = _train_net(
        root,
        ["--eval-only", "MODEL.WEIGHTS", f"{PREFIX}run/model_final.pth", "OUTPUT_DIR",
         f"{PREFIX}eval"],
        cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    log = evaluate.communicate(timeout=600)[0]
    assert evaluate.returncode == 0, log[-5000:]
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    assert (root / "eval" / "inference" / "coco_instances_results.json").is_file()
    assert (root / "eval" / "log.txt").is_file()
    assert os.listdir(cwd) == []  # nothing written to a local "testfs:" folder by a plain open


def test_demo_reads_weights_and_images_and_writes_pngs_through_the_handler(storage):
    sys.path.insert(0, REPO_ROOT)
    import demo
    from detectron2.modeling import build_model

    model = build_model(setup_cfg(PIOU_DEMO, TINY_DATA))
    SafeDetectionCheckpointer(model, f"{PREFIX}run").save("model_final")
    os.makedirs(os.path.join(storage.root, "images"))
    for name, value in (("a", 40), ("b", 200)):
        image = np.full((64, 48, 3), value, np.uint8)
        cv2.imwrite(os.path.join(storage.root, "images", f"{name}.png"), image)
    written = demo.main(
        ["--config-file", PIOU_DEMO, "--input", f"{PREFIX}images", "--output", f"{PREFIX}vis",
         "--confidence-threshold", "0.0", "--opts", "MODEL.WEIGHTS",
         f"{PREFIX}run/model_final.pth"] + TINY_DATA  # fmt: skip
    )
    assert written == [f"{PREFIX}vis/a.png", f"{PREFIX}vis/b.png"]
    assert storage.opened[-2:] == written  # through the handler (a missing weights file fails)
    for name, value in (("a", 40), ("b", 200)):
        drawn = cv2.imread(os.path.join(storage.root, "vis", f"{name}.png"))
        assert drawn.shape == (64, 48, 3) and np.median(drawn) == value  # that image, drawn on
