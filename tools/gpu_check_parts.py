#!/usr/bin/env python
"""
Two parts of the GPU acceptance run (``tools/gpu_check.py``, docs/gpu_acceptance.md) that no
other tool covers; each writes a JSON result and exits non-zero when its check fails.

``export``: both detectors exported by ``anchor_free_app.export`` (tracing, TorchScript and ONNX,
on the CPU as ``tools/export_model.py`` does, and on CUDA also TorchScript traced there), run on
``--device`` and compared with the eager model there on generated images of other sizes
(``compare_detections``). TorchScript runs on the device (``torch.jit.load(map_location=...)``);
ONNX runs on ONNX Runtime's CUDA provider when it is installed, else on its CPU provider (said in
the result). On CUDA, TF32 is turned off so that eager float32 is comparable with ONNX Runtime.

    python tools/gpu_check_parts.py export --device cuda --output DIR \
        --model pseudo_iou=CONFIG[:WEIGHTS] --model autoassign=CONFIG[:WEIGHTS] [KEY VALUE ...]

``launch``: Detectron2's distributed worker (``detectron2.engine.launch._distributed_worker``, what
``launch`` starts per GPU when the world has more than one process; backend NCCL on CUDA) with
one process, on CUDA; on the CPU the project's gloo worker (``anchor_free_app.launch``). The worker
runs ``train_net.main`` (training, then evaluation through the process group), an all-reduce,
and two DistributedDataParallel steps of the same model (gradients reduced by NCCL).

    python tools/gpu_check_parts.py launch --device cuda --output DIR --config-file CONFIG \
        [KEY VALUE ...]
"""
import argparse
import copy
import json
import math
import os
import socket
import sys
import time
from datetime import timedelta
from typing import Any, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

# Exported vs eager on CUDA, TF32 off: ONNX Runtime (another library's kernels) gets a wider box
# and score tolerance than the CPU defaults of anchor_free_app.export; TorchScript runs the same
# kernels as eager and keeps them.
CUDA_ONNX_BOX_TOL = 1e-2
CUDA_ONNX_SCORE_TOL = 1e-4
CHECK_SIZES = ((96, 128), (150, 203))


def _write(path: str, result: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)


# ------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------
def _onnx_runner(path: str, device: torch.device):
    """(callable image -> Instances, provider used, providers available)."""
    import numpy as np
    import onnxruntime

    from anchor_free_app.export import INPUT_NAME, instances_from_outputs

    available = onnxruntime.get_available_providers()
    wanted = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    provider = wanted if wanted in available else "CPUExecutionProvider"
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(path, options, providers=[provider])
    names = [o.name for o in session.get_outputs()]

    def run(image: torch.Tensor):
        outputs = session.run(None, {INPUT_NAME: image.cpu().numpy()})
        return instances_from_outputs(
            {n: torch.from_numpy(np.asarray(v)) for n, v in zip(names, outputs)})

    return run, session.get_providers()[0], available


def _torchscript_runner(path: str, device: torch.device):
    from anchor_free_app.export import EXPORT_INFO_FILE, instances_from_outputs

    extra = {EXPORT_INFO_FILE: ""}
    module = torch.jit.load(path, map_location=device, _extra_files=extra)
    names = json.loads(extra[EXPORT_INFO_FILE])["output_names"]

    def run(image: torch.Tensor):
        with torch.no_grad():
            outputs = module(image)
        return instances_from_outputs({n: v.cpu() for n, v in zip(names, outputs)})

    return run


def export_one(name: str, config: str, weights: str, opts: Sequence[str], device: torch.device,
               output: str, score_thresh: float) -> Dict[str, Any]:
    """
    Export one detector and run the exports on ``device`` against the eager model there, on
    CHECK_SIZES, with the detector's ``SCORE_THRESH_TEST`` at ``score_thresh`` (0: every
    candidate passes, so that there are detections to compare, as tests/test_export.py does).
    Traced on the CPU as ``tools/export_model.py`` does (TorchScript, ONNX); on CUDA also
    TorchScript traced on the device.
    """
    from detectron2.modeling import build_model

    from anchor_free_app.checkpoint import SafeDetectionCheckpointer
    from anchor_free_app.config import setup_cfg
    from anchor_free_app.export import (
        ONNX_BOX_TOL, ONNX_MIN_SCORE, ONNX_SCORE_TOL, compare_detections, eager_detections,
        export_model, generated_image, sample_input,
    )  # fmt: skip

    cfg = setup_cfg(config, list(opts) + ["MODEL.DEVICE", "cpu"], freeze=False)
    node = {"PseudoIoU": "PSEUDO_IOU", "AutoAssign": "AUTOASSIGN"}[cfg.MODEL.META_ARCHITECTURE]
    cfg.MODEL[node].SCORE_THRESH_TEST = score_thresh
    cfg.freeze()
    model = build_model(cfg)
    if weights:
        SafeDetectionCheckpointer(model, strict=True).load(weights)
    model.eval()
    on_device = model if device.type == "cpu" else copy.deepcopy(model).to(device)
    image = sample_input(cfg)
    result: Dict[str, Any] = {"config": config, "weights": weights or "random init",
                              "traced_size": list(image.shape[1:]), "formats": {}}
    variants = [("torchscript", "torchscript", model), ("onnx", "onnx", model)]
    if device.type != "cpu":
        variants.append((f"torchscript_traced_on_{device.type}", "torchscript", on_device))
    for key, fmt, traced in variants:
        entry: Dict[str, Any] = {"traced_on": str(next(traced.parameters()).device)}
        result["formats"][key] = entry
        started = time.time()
        try:
            sample = image.to(next(traced.parameters()).device)
            path = export_model(traced, sample, os.path.join(output, name, key), fmt, "tracing")
            entry["export_s"] = round(time.time() - started, 2)
            if fmt == "torchscript":
                run, entry["ran_on"] = _torchscript_runner(path, device), str(device)
                box_tol, score_tol = ONNX_BOX_TOL, ONNX_SCORE_TOL
            else:
                run, provider, available = _onnx_runner(path, device)
                entry["ran_on"], entry["providers_available"] = provider, available
                if device.type == "cuda" and provider != "CUDAExecutionProvider":
                    entry["note"] = ("ONNX Runtime's CUDA provider is not installed: the ONNX "
                                     "model ran on its CPU provider")
                cuda = device.type == "cuda"
                box_tol = CUDA_ONNX_BOX_TOL if cuda else ONNX_BOX_TOL
                score_tol = CUDA_ONNX_SCORE_TOL if cuda else ONNX_SCORE_TOL
            entry.update(box_tol=box_tol, score_tol=score_tol, images=[])
            for seed, (h, w) in enumerate(CHECK_SIZES, start=1):
                img = generated_image(h, w, seed=seed).astype("float32").transpose(2, 0, 1)
                img = torch.as_tensor(img.copy()).to(device)
                parity = compare_detections(eager_detections(on_device, img), run(img),
                                            min_score=ONNX_MIN_SCORE, box_tol=box_tol,
                                            score_tol=score_tol)
                entry["images"].append(parity.as_dict())
            entry["ok"] = all(not (r["unmatched_reference"] or r["unmatched_other"])
                              and r["num_reference"] > 0 for r in entry["images"])
        except Exception as e:  # reported, the other exports still run
            entry.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000])
    return result


def export_main(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda":  # float32 eager, comparable with ONNX Runtime
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    results = {"device": str(device), "models": {}}
    for spec in args.model:
        name, _, rest = spec.partition("=")
        config, _, weights = rest.partition(":")
        if weights and not os.path.isfile(weights):
            weights = ""  # the training part did not leave a model: random weights, said
        results["models"][name] = export_one(name, config, weights, args.opts, device,
                                             args.output, args.score_thresh)
    results["ok"] = all(f.get("ok") for m in results["models"].values()
                        for f in m["formats"].values())
    _write(os.path.join(args.output, "export.json"), results)
    print(json.dumps(results, indent=1)[:4000])
    return 0 if results["ok"] else 1


# ------------------------------------------------------------------------------------------
# launch
# ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker_main(args: argparse.Namespace, result_path: str) -> None:
    """Runs in the launched worker, inside the process group."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import train_net
    from anchor_free_app.engine import Trainer
    from detectron2.utils import comm

    result: Dict[str, Any] = {"backend": str(dist.get_backend()),
                              "world_size": dist.get_world_size()}
    started = time.time()
    train_args = argparse.Namespace(config_file=args.config_file, opts=list(args.opts),
                                    eval_only=False, resume=False, num_gpus=1)
    train_net.main(train_args)
    result["train_net_s"] = round(time.time() - started, 1)
    cfg = train_net.setup(train_args)
    device = torch.device(cfg.MODEL.DEVICE)
    ones = torch.ones(4, device=device)
    dist.all_reduce(ones)
    result["all_reduce_ok"] = bool((ones == dist.get_world_size()).all())
    model = Trainer.build_model(cfg)
    ddp = DistributedDataParallel(
        model, device_ids=[comm.get_local_rank()] if device.type == "cuda" else None,
        broadcast_buffers=False)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    data = iter(Trainer.build_train_loader(cfg))
    losses: List[float] = []
    from detectron2.utils.events import EventStorage

    with EventStorage(0):
        for _ in range(2):  # the second step checks DDP's reduction of the first
            loss = sum(ddp(next(data)).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    result["ddp_losses"] = losses
    result["ok"] = (result["all_reduce_ok"] and all(math.isfinite(v) for v in losses)
                    and (result["backend"] == "nccl") == (device.type == "cuda"))
    _write(result_path, result)


def launch_main(args: argparse.Namespace) -> int:
    import torch.multiprocessing as mp

    result_path = os.path.join(args.output, "launch.json")
    if os.path.exists(result_path):
        os.remove(result_path)
    if args.device == "cuda":
        from detectron2.engine.launch import _distributed_worker as worker
    else:
        from anchor_free_app.launch import _cpu_worker as worker
    dist_url = f"tcp://127.0.0.1:{_free_port()}"
    opts = list(args.opts) + ["MODEL.DEVICE", args.device, "OUTPUT_DIR",
                              os.path.join(args.output, "train")]
    worker_args = argparse.Namespace(config_file=args.config_file, opts=opts)
    mp.start_processes(
        worker, nprocs=1, start_method="spawn", daemon=False,
        args=(_worker_main, 1, 1, 0, dist_url, (worker_args, result_path),
              timedelta(minutes=10)),
    )
    with open(result_path) as f:
        result = json.load(f)
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    exp = sub.add_parser("export")
    exp.add_argument("--model", action="append", required=True,
                     help="NAME=CONFIG[:WEIGHTS] (weights missing: random init)")
    exp.add_argument("--score-thresh", type=float, default=0.0,
                     help="SCORE_THRESH_TEST of the exported models")
    lau = sub.add_parser("launch")
    lau.add_argument("--config-file", required=True)
    for p in (exp, lau):
        p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
        p.add_argument("--output", required=True)
        p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE")
    args = parser.parse_args(argv)
    return export_main(args) if args.part == "export" else launch_main(args)


if __name__ == "__main__":
    sys.exit(main())
