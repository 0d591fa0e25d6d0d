"""Reliability of the engine shared by both detectors: dataset errors before training, clear
config errors, global-norm gradient clipping, exact resume after a kill, strict --eval-only
loading, non-finite losses, and CPU multi-process launch."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from common import AA_DEMO, PIOU_DEMO, PIOU_DEMO_PYTHON, REPO_ROOT, TINY_DATA, opts, run

from anchor_free_app.checkpoint import (
    CheckpointMismatchError,
    SafeDetectionCheckpointer,
    repair_metrics_file,
)
from anchor_free_app.config import get_project_cfg, setup_cfg
from anchor_free_app.engine import Trainer
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model


# ---------------------------------------------------------------- dataset and config errors
# (the training-data checks: tests/test_data_checks.py)
def _tiny_cfg(config=PIOU_DEMO, opts=()):
    return setup_cfg(config, TINY_DATA + ["MODEL.DEVICE", "cpu"] + list(opts), freeze=False)


def test_unregistered_dataset_fails_before_training():
    cfg = _tiny_cfg(opts=["DATASETS.TRAIN", "('no_such_dataset',)"])
    with pytest.raises(KeyError, match="no_such_dataset.*not registered"):
        Trainer.build_train_loader(cfg)


def test_missing_annotation_json_fails_before_training(tmp_path):
    register_coco_instances("test_missing_json", {}, str(tmp_path / "nope.json"), str(tmp_path))
    cfg = _tiny_cfg(opts=["DATASETS.TRAIN", "('test_missing_json',)"])
    with pytest.raises(Exception, match="nope.json"):
        Trainer.build_train_loader(cfg)


def test_config_value_of_wrong_type_names_the_key():
    with pytest.raises(Exception, match="SOLVER.MAX_ITER|MAX_ITER"):
        _tiny_cfg(opts=["SOLVER.MAX_ITER", "many"])
    with pytest.raises(FileNotFoundError, match="no_such.yaml"):
        setup_cfg("configs/no_such.yaml")


@pytest.mark.parametrize(
    "config, key, value",
    [
        (PIOU_DEMO, "MODEL.PSEUDO_IOU.PSEUDO_IOU_THRESH", "1.5"),
        (PIOU_DEMO, "MODEL.PSEUDO_IOU.PSEUDO_IOU_THRESH", "-0.1"),
        (AA_DEMO, "MODEL.AUTOASSIGN.TAU", "0.0"),
        (AA_DEMO, "MODEL.AUTOASSIGN.SIGMA_INIT", "-1.0"),
    ],
)
def test_out_of_range_config_fails_at_build_time(config, key, value):
    cfg = _tiny_cfg(config, [key, value])
    with pytest.raises(ValueError, match=key.split(".")[-1]):
        build_model(cfg)


# ---------------------------------------------------------------- optimisation
def test_full_model_gradient_clipping_clips_the_global_norm():
    cfg = get_project_cfg()
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.BIAS_LR_FACTOR = 1.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    model = torch.nn.Linear(3, 1)
    optimizer = Trainer.build_optimizer(cfg, model)
    before = [p.detach().clone() for p in model.parameters()]
    model.weight.grad = torch.full_like(model.weight, 30.0)
    model.bias.grad = torch.full_like(model.bias, 40.0)
    optimizer.step()
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    # one global norm: the whole update has norm 1 (per-parameter clipping would give sqrt(2))
    assert step.norm().item() == pytest.approx(1.0, rel=1e-4)
    ratio = (step[:3] / step[3]).tolist()  # direction kept: 30/40 for each weight entry
    assert ratio == pytest.approx([0.75] * 3, rel=1e-4)


def test_checkpoint_holds_optimizer_and_scheduler_and_resume_restores_them(tmp_path):
    opts = ["SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "3", "OUTPUT_DIR", str(tmp_path),
            "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()"]  # fmt: skip
    cfg = _tiny_cfg(opts=opts)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    with open(tmp_path / "last_checkpoint") as f:
        assert f.read() == "model_final.pth"
    saved = torch.load(tmp_path / "model_0000002.pth", map_location="cpu", weights_only=False)
    assert saved["iteration"] == 2 and saved["trainer"]["iteration"] == 2
    momentum = saved["trainer"].get("_trainer", {}).get("optimizer", {}).get("state")
    assert momentum, "optimizer state (momentum buffers) missing from the checkpoint"
    assert saved["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 3  # scheduler state

    resumed = Trainer(_tiny_cfg(opts=opts + ["SOLVER.MAX_ITER", "5"]))
    resumed.checkpointer.load(str(tmp_path / "model_0000002.pth"))
    assert resumed.iter == 2
    scheduler = resumed.scheduler.state_dict()
    assert scheduler["last_epoch"] == saved["trainer"]["hooks"]["LRScheduler"]["last_epoch"]
    state = resumed._trainer.optimizer.state_dict()["state"]
    assert state.keys() == momentum.keys()
    for k in momentum:
        torch.testing.assert_close(state[k]["momentum_buffer"], momentum[k]["momentum_buffer"])


def test_strict_loading_rejects_a_checkpoint_of_another_architecture(tmp_path):
    piou = build_model(_tiny_cfg(PIOU_DEMO))
    SafeDetectionCheckpointer(piou, str(tmp_path)).save("piou")
    autoassign = build_model(_tiny_cfg(AA_DEMO))
    with pytest.raises(CheckpointMismatchError, match="AutoAssign.*META_ARCHITECTURE"):
        SafeDetectionCheckpointer(autoassign, strict=True).load(str(tmp_path / "piou.pth"))
    # and the same model loads strictly
    SafeDetectionCheckpointer(build_model(_tiny_cfg(PIOU_DEMO)), strict=True).load(
        str(tmp_path / "piou.pth")
    )


def test_eval_only_with_wrong_checkpoint_is_an_error(tmp_path):
    model = build_model(_tiny_cfg(AA_DEMO))
    SafeDetectionCheckpointer(model, str(tmp_path)).save("autoassign")
    code, out = run(
        ["train_net.py", "--config-file", PIOU_DEMO, "--eval-only", "MODEL.WEIGHTS",
         str(tmp_path / "autoassign.pth"), "OUTPUT_DIR", str(tmp_path / "eval")] + TINY_DATA,
        check=False,
    )  # fmt: skip
    assert code != 0 and "CheckpointMismatchError" in out and "PseudoIoU" in out


def test_non_finite_loss_stops_with_iteration_and_term(tmp_path):
    cfg = _tiny_cfg(opts=["SOLVER.MAX_ITER", "5", "OUTPUT_DIR", str(tmp_path)])
    trainer = Trainer(cfg)
    model = trainer.model
    original = model.forward_training

    def nan_at_iteration_2(*args, **kwargs):
        losses = original(*args, **kwargs)
        if trainer.iter == 2:
            losses["loss_box_reg"] = losses["loss_box_reg"] * float("nan")
        return losses

    model.forward_training = nan_at_iteration_2
    # Detectron2 prints the loss dict: "'loss_box_reg': nan" with numpy < 2,
    # "'loss_box_reg': np.float64(nan)" with numpy 2 (repr of numpy scalars)
    with pytest.raises(
        FloatingPointError, match=r"iteration=2(.|\n)*'loss_box_reg': (np\.float64\()?nan"
    ):
        trainer.train()


def test_repair_metrics_file(tmp_path):
    path = str(tmp_path / "metrics.json")
    with open(path, "w") as f:
        for i in range(6):
            f.write(json.dumps({"iteration": i, "total_loss": 1.0}) + "\n")
        f.write('{"iteration": 6, "total_lo')  # cut by a kill
    repair_metrics_file(path, resume_iter=4)
    with open(path) as f:
        assert [json.loads(line)["iteration"] for line in f] == [0, 1, 2, 3]


# ---------------------------------------------------------------- processes
@pytest.mark.parametrize("config", [PIOU_DEMO, PIOU_DEMO_PYTHON], ids=os.path.basename)
def test_kill_then_resume_continues_from_last_checkpoint(config, tmp_path):
    out_dir = tmp_path / "run"
    args = ["train_net.py", "--config-file", config] + opts(
        config, "SOLVER.MAX_ITER", "40", "SOLVER.CHECKPOINT_PERIOD", "5", "OUTPUT_DIR",
        str(out_dir), "DATASETS.TEST", "()")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable] + args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 300
    try:
        while not (out_dir / "model_0000014.pth").exists():
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline, "no checkpoint after 300 s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with open(out_dir / "last_checkpoint") as f:
        last = f.read()
    saved = torch.load(out_dir / last, map_location="cpu", weights_only=False)  # complete file
    assert not (out_dir / "model_final.pth").exists()
    resume_from = saved["iteration"] + 1
    assert resume_from >= 15

    log = run(args[:3] + ["--resume"] + args[3:])
    assert f"Starting training from iteration {resume_from}" in log
    assert (out_dir / "model_final.pth").exists()
    with open(out_dir / "metrics.json") as f:
        iterations = [json.loads(line)["iteration"] for line in f]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 39


@pytest.mark.parametrize("config", [PIOU_DEMO, PIOU_DEMO_PYTHON], ids=os.path.basename)
def test_two_cpu_worker_processes(config, tmp_path):
    log = run(["train_net.py", "--config-file", config, "--num-gpus", "2"]
              + opts(config, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path)))  # fmt: skip
    device = "MODEL.DEVICE cpu" if config == PIOU_DEMO else "train.device=cpu"
    assert f"{device}: 2 CPU worker processes per machine (gloo backend)" in log
    assert "copypaste: AP" in log
    assert (tmp_path / "model_final.pth").exists()
