"""No silent CPU fallback: MODEL.DEVICE cuda without CUDA (or --num-gpus above the number of
GPUs) is an error in the launching process, before any worker starts; CPU training, with CPU
worker processes for --num-gpus N, only with MODEL.DEVICE cpu. CUDA is hidden or faked here, so
the tests give the same answer on machines with and without GPUs."""
import os
import subprocess
import sys

import pytest
import torch
from common import PIOU_DEMO, PIOU_DEMO_PYTHON, REPO_ROOT, TINY_DATA

import anchor_free_app.launch as launch_module
from anchor_free_app.config import setup_cfg, setup_python_cfg
from anchor_free_app.device import DeviceError, available_device, check_device, check_launch

NO_CUDA = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")


@pytest.fixture
def gpus(monkeypatch):
    """``gpus(n)``: make torch report ``n`` CUDA devices (0: CUDA not available)."""

    def fake(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return fake


def test_cuda_without_cuda_names_the_key_what_was_found_and_the_fix(gpus):
    gpus(0)
    with pytest.raises(DeviceError) as e:
        # the demo config sets no device: Detectron2's default, cuda, is asked for
        setup_cfg(PIOU_DEMO, ["DATASETS.TRAIN", "('not_generated',)"])
    message = str(e.value)
    assert "MODEL.DEVICE is 'cuda' but CUDA is not available" in message
    assert "torch.cuda.is_available()=False" in message
    assert "torch.cuda.device_count()=0" in message
    assert f"torch.version.cuda={torch.version.cuda}" in message
    assert "pass MODEL.DEVICE cpu" in message
    with pytest.raises(DeviceError, match="'cuda:0' but CUDA is not available"):
        check_device("cuda:0")


def test_python_config_asking_for_cuda_without_cuda_names_train_device(gpus):
    gpus(0)
    with pytest.raises(DeviceError) as e:  # Detectron2's common/train.py: device="cuda"
        setup_python_cfg(PIOU_DEMO_PYTHON)
    message = str(e.value)
    assert "train.device is 'cuda' but CUDA is not available" in message
    assert "pass train.device=cpu (train_net.py: trailing 'train.device=cpu'" in message


def test_python_config_cuda_training_stops_before_any_worker_starts(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", PIOU_DEMO_PYTHON, "--num-gpus", "2",
         f"train.output_dir={tmp_path}"],
        cwd=REPO_ROOT, env=NO_CUDA, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "DeviceError: train.device is 'cuda' but CUDA is not available" in proc.stdout
    assert not os.listdir(tmp_path)  # no worker started, nothing written


def test_cpu_is_kept_and_cuda_index_is_checked(gpus):
    gpus(0)
    cfg = setup_cfg(PIOU_DEMO, TINY_DATA, freeze=False)  # TINY_DATA asks for the CPU
    assert cfg.MODEL.DEVICE == "cpu"
    assert available_device() == "cpu"
    gpus(2)
    assert available_device() == "cuda"
    check_device("cuda")
    check_device("cuda:1")
    with pytest.raises(DeviceError, match=r"'cuda:2' but there are 2 CUDA devices"):
        check_device("cuda:2")


def test_no_device_check_for_tools_that_run_no_model(gpus):
    gpus(0)
    cfg = setup_cfg(PIOU_DEMO, ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()"],
                    check_device=False)  # fmt: skip
    assert cfg.MODEL.DEVICE == "cuda"  # left as asked, not rewritten


@pytest.mark.parametrize(
    "device, num_gpus, present, expected",
    [
        ("cpu", 1, 0, "MODEL.DEVICE cpu: one process on the CPU"),
        ("cpu", 2, 0, "MODEL.DEVICE cpu: 2 CPU worker processes per machine (gloo backend)"),
        ("cpu", 2, 8, "MODEL.DEVICE cpu: 2 CPU worker processes per machine (gloo backend)"),
        ("cuda", 2, 2, "MODEL.DEVICE cuda: 2 GPU worker(s) per machine"),
        ("cuda", 1, 8, "MODEL.DEVICE cuda: 1 GPU worker(s) per machine"),
    ],
)
def test_check_launch_says_what_runs(gpus, device, num_gpus, present, expected):
    gpus(present)
    assert check_launch(device, num_gpus) == expected


@pytest.mark.parametrize(
    "device, num_gpus, present, message",
    [
        ("cuda", 1, 0, "MODEL.DEVICE is 'cuda' but CUDA is not available"),
        ("cuda", 2, 0, "MODEL.DEVICE is 'cuda' but CUDA is not available"),
        ("cuda", 8, 2, "--num-gpus 8 but this machine has 2 CUDA devices.*--num-gpus 2 or fewer, "
                       "or MODEL.DEVICE cpu for 8 CPU worker processes"),
        ("mps", 2, 0, "--num-gpus 2 needs MODEL.DEVICE cuda .* or cpu"),
    ],
)  # fmt: skip
def test_check_launch_rejects_what_is_not_there(gpus, device, num_gpus, present, message):
    gpus(present)
    with pytest.raises(DeviceError, match=message):
        check_launch(device, num_gpus)
    with pytest.raises(ValueError, match="--num-gpus must be at least 1"):
        check_launch("cpu", 0)


@pytest.fixture
def started(monkeypatch):
    """Record, instead of running, what ``launch`` starts: Detectron2's launch or CPU workers."""
    calls = []
    monkeypatch.setattr(launch_module, "d2_launch", lambda *a, **k: calls.append(("d2", a[1])))
    monkeypatch.setattr(
        launch_module.mp, "start_processes", lambda *a, **k: calls.append(("cpu", k["nprocs"]))
    )
    return calls


@pytest.mark.parametrize(
    "device, num_gpus, present, expected",
    [
        ("cpu", 2, 0, [("cpu", 2)]),  # CPU workers only when asked for
        ("cpu", 2, 2, [("cpu", 2)]),  # ... also where there are GPUs
        ("cpu", 1, 0, [("d2", 1)]),  # one process: Detectron2's launch runs it in place
        ("cuda", 2, 2, [("d2", 2)]),
        ("cuda", 2, 0, DeviceError),  # nothing started
        ("cuda", 4, 2, DeviceError),
    ],
)
def test_launch_starts_only_what_was_asked_for(gpus, started, device, num_gpus, present, expected):
    gpus(present)
    if expected is DeviceError:
        with pytest.raises(DeviceError):
            launch_module.launch(print, num_gpus, device=device)
        assert started == []
    else:
        launch_module.launch(print, num_gpus, device=device)
        assert started == expected


def _train_net(num_gpus, device, out_dir):
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", PIOU_DEMO, "--num-gpus", num_gpus]
        + TINY_DATA + ["SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out_dir), "MODEL.DEVICE", device],
        cwd=REPO_ROOT, env=NO_CUDA, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=600,
    )  # fmt: skip
    return proc.returncode, proc.stdout


def test_train_net_without_cuda_fails_before_any_worker_starts(tmp_path):
    # TINY_DATA asks for the CPU; the last override asks for cuda again, as a GPU config does.
    # (The same command with MODEL.DEVICE cpu trains on 2 CPU workers:
    # test_engine.py::test_two_cpu_worker_processes.)
    code, out = _train_net("2", "cuda", tmp_path / "out")
    assert code != 0
    assert "DeviceError: MODEL.DEVICE is 'cuda' but CUDA is not available" in out
    assert "pass MODEL.DEVICE cpu" in out
    assert "CPU worker processes per machine" not in out and "Starting training" not in out
    assert not (tmp_path / "out").exists()  # default_setup (in the workers) never ran


def test_device_module_prints_the_choice_and_make_demo_uses_it():
    proc = subprocess.run(
        [sys.executable, "-m", "anchor_free_app.device"], cwd=REPO_ROOT, env=NO_CUDA,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True,
    )  # fmt: skip
    assert proc.stdout == "cpu\n"
    assert "MODEL.DEVICE cpu: no CUDA found (torch.cuda.is_available()=False" in proc.stderr
    dry_run = subprocess.run(
        ["make", "-n", "demo"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, check=True
    ).stdout
    assert "device=$(.venv/bin/python -m anchor_free_app.device)" in dry_run
    assert "MODEL.DEVICE $device" in dry_run
