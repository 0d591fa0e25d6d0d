#!/usr/bin/env python
"""
The GPU acceptance run in one command (docs/gpu_acceptance.md): on a GPU machine with Python 3.12
and its own torch, installs what ``make gpu-prepare`` (``tools/gpu_prepare.py``) gathered, then
runs six parts, each as subprocesses with its own time limit and verdict:

    setup   wheels installed (``pip install --no-index --no-deps --target``), Detectron2 main's
            Python code from the bundled source archive (the v0.6 fallback wheel if it does not
            import), the built-in dataset generated, and Detectron2 main's CUDA operators built
            in the background (nvcc, ``TORCH_CUDA_ARCH_LIST`` of the GPU; measured)
    1 train  Pseudo-IoU, the AF-baseline and AutoAssign (demo configs) trained by ``train_net.py``
            with ``SOLVER.AMP.ENABLED True`` and in float32, same seed and schedule, concurrently,
            then ``--eval-only`` on each final model: losses finite, AP under AMP within
            ``--ap-margin`` of float32, iterations per second
    2 bench  ``benchmarks/benchmark.py`` (``make bench``): train step, inference, assignment +
            loss and peak memory against Detectron2's FCOS and RetinaNet, R-50-FPN at 800x1333,
            2 images, and the sweep to 1000 boxes
    3 syncs  ``benchmark.py --syncs``: synchronisations per iteration counted by
            ``benchmarks/syncs.py`` and, on CUDA, by ``torch.cuda.set_sync_debug_mode``
    4 dcn    the R-101-DCN config trains 20 iterations on the built-in dataset (needs the CUDA
            operators built in set-up; else skipped, with the reason)
    5 export TorchScript and ONNX exports of both detectors run on the device and match eager
            (``tools/gpu_check_parts.py export``)
    6 launch Detectron2's distributed worker with NCCL, one GPU: train_net's training and
            evaluation, an all-reduce and DistributedDataParallel steps
            (``tools/gpu_check_parts.py launch``)

Writes ``gpu_check.json``, ``gpu_check.md`` and ``gpu_check_artifacts.tar.gz`` (logs and each
part's own results) to ``--output``; exits 1 if a part fails (a part skipped for a stated reason
is not a failure). ``--device cpu`` is the same run at tiny sizes with the running interpreter's
packages (CI: tests/test_gpu_check.py): the AMP runs are float32 stand-ins (Detectron2's
``AMPTrainer`` needs CUDA) and the DCN part is skipped (deformable convolution trains on CUDA
only); the bundle, if present, is installed for CPython 3.12 into a folder that is not used.

    make gpu-check GPU_OUT=$OUT             # on the GPU machine
    make gpu-check DEVICE=cpu               # here: .venv, tiny sizes, about 2 minutes
"""
import argparse
import datetime
import glob
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("setup", "train", "bench", "syncs", "dcn", "export", "launch")
RUN_ORDER = ("setup", "train", "bench", "syncs", "export", "launch", "dcn")  # dcn waits for build
TITLES = {
    "setup": "0. Set-up: wheels, Detectron2 route, CUDA operators",
    "train": "1. Both detectors + AF-baseline: AMP vs float32, --eval-only",
    "bench": "2. make bench: train / inference / assignment + loss / memory vs FCOS, RetinaNet",
    "syncs": "3. Synchronisations per iteration: set_sync_debug_mode vs benchmarks/syncs.py",
    "dcn": "4. DCN config trains 20 iterations",
    "export": "5. Exported TorchScript and ONNX on the device vs eager",
    "launch": "6. Detectron2 launch worker with NCCL, one GPU",
}
DEMO = {  # name: (config, MODEL node)
    "pseudo_iou": ("configs/PseudoIoU/pseudo_iou_R_18_FPN_demo.yaml", "PSEUDO_IOU"),
    "af_baseline": ("configs/PseudoIoU/af_baseline_R_18_FPN_demo.yaml", "PSEUDO_IOU"),
    "autoassign": ("configs/AutoAssign/autoassign_R_18_FPN_demo.yaml", "AUTOASSIGN"),
}
# |AP(--eval-only of model_final.pth) - AP(evaluation at the end of training)|, AP points: the
# same weights and data; room for the order of floating-point sums on CUDA.
ROUND_TRIP_AP_TOL = 0.2
DCN_CONFIG = "configs/PseudoIoU/pseudo_iou_R_101_FPN_DCN_2x.yaml"
WHEEL_PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                  "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
                  "--platform", "any"]


@dataclass
class Sizes:
    """What each part runs on a device (``SIZES``)."""

    budget_s: float  # the whole run
    limits: Dict[str, float]  # per part, seconds
    build_limit_s: float  # Detectron2's CUDA operators, in the background
    dataset: List[str]  # DATASETS.DEMO_SHAPES overrides (generated in set-up)
    train_opts: List[str]  # every train_net run of parts 1, 4, 6
    train_configs: Tuple[str, ...]
    train_iters: int
    train_parallel: int
    ap_margin: float
    export_models: Tuple[str, ...]
    bench_args: List[str]
    syncs_args: List[str]
    omp_threads: Optional[int]


def _demo_opts(size: int, train: int, val: int) -> List[str]:
    return ["DATASETS.DEMO_SHAPES.NUM_TRAIN", str(train), "DATASETS.DEMO_SHAPES.NUM_VAL", str(val),
            "DATASETS.DEMO_SHAPES.IMAGE_SIZE", str(size), "INPUT.MIN_SIZE_TRAIN", f"({size},)",
            "INPUT.MAX_SIZE_TRAIN", str(size), "INPUT.MIN_SIZE_TEST", str(size),
            "INPUT.MAX_SIZE_TEST", str(size)]


SIZES = {
    # About 8 minutes on one H100 / H200 with 16 cores, set-up included. The demo schedule
    # shortened to 600 iterations (steps scaled), 6 runs at once.
    "cuda": Sizes(
        budget_s=480,
        limits={"setup": 90, "train": 200, "bench": 180, "syncs": 90, "dcn": 90, "export": 90,
                "launch": 90},
        build_limit_s=300,
        dataset=_demo_opts(128, 2000, 100),
        train_opts=["SEED", "42", "SOLVER.MAX_ITER", "600", "SOLVER.STEPS", "(400, 520)",
                    "SOLVER.CHECKPOINT_PERIOD", "100000", "DATALOADER.NUM_WORKERS", "2"],
        train_configs=tuple(DEMO), train_iters=600, train_parallel=6,
        # Provisional: replace by ~3x the float32-vs-float32 spread once measured on the GPU.
        ap_margin=3.0,
        export_models=("pseudo_iou", "autoassign"),
        bench_args=[],  # make bench's defaults on CUDA: R-50-FPN, 2 x 800x1333, sweep
        syncs_args=[],  # make bench-syncs's: R-18 at 256x320, 1/2/4 images, 5/20/100 boxes
        omp_threads=2,
    ),
    # The same plumbing at tiny sizes on the CPU (CI).
    "cpu": Sizes(
        budget_s=600,
        limits={"setup": 60, "train": 150, "bench": 120, "syncs": 90, "dcn": 60, "export": 90,
                "launch": 60},
        build_limit_s=0,
        dataset=_demo_opts(64, 8, 2),
        train_opts=["SEED", "42", "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "()",
                    "SOLVER.WARMUP_ITERS", "1", "SOLVER.IMS_PER_BATCH", "2",
                    "SOLVER.CHECKPOINT_PERIOD", "100000", "DATALOADER.NUM_WORKERS", "0"],
        # The AF-baseline is Pseudo-IoU's code with another assigner: the same plumbing.
        train_configs=("pseudo_iou", "autoassign"), train_iters=3, train_parallel=2,
        ap_margin=3.0, export_models=("pseudo_iou",),  # tests/test_export.py: both, CPU
        bench_args=["--depth", "18", "--fpn-channels", "64", "--num-convs", "1",
                    "--num-classes", "4", "--image-size", "128", "160", "--batch-size", "1",
                    "--warmup", "0", "--iters", "1", "--assign-iters", "1", "--sweep-boxes",
                    "1,10", "--sweep-short-sides", "96", "--threads", "1"],
        syncs_args=["--fpn-channels", "64", "--num-convs", "1", "--num-classes", "4",
                    "--image-size", "128", "160", "--batch-size", "1", "--boxes", "3",
                    "--sync-images", "1,2", "--sync-boxes", "3", "--threads", "1"],
        omp_threads=1,
    ),
}


@dataclass
class PartResult:
    name: str
    title: str
    verdict: str = "fail"  # pass | fail | skipped
    reason: str = ""
    seconds: float = 0.0
    limit_s: float = 0.0
    figures: Dict[str, Any] = field(default_factory=dict)
    logs: List[str] = field(default_factory=list)
    build_running: bool = False  # Detectron2's CUDA operators compiling meanwhile (nice 10)


class Context:
    """The run's settings, environment and state shared by the parts."""

    def __init__(self, args: argparse.Namespace):
        self.device = args.device
        self.sizes = SIZES[args.device]
        self.python = args.python or sys.executable
        self.bundle = os.path.abspath(args.bundle)
        self.work = os.path.abspath(args.work)
        self.started = time.time()
        self.deadline = self.started + (args.budget or self.sizes.budget_s)
        self.limits = dict(self.sizes.limits)
        for item in args.part_limit:
            name, _, seconds = item.partition("=")
            if name not in self.limits:
                raise SystemExit(f"--part-limit {item}: unknown part; choose from {PARTS}")
            self.limits[name] = float(seconds)
        self.ap_margin = args.ap_margin if args.ap_margin is not None else self.sizes.ap_margin
        self.route = args.route or ("auto" if args.device == "cuda" else "installed")
        self.pythonpath = [ROOT]
        self.d2_source: Optional[str] = None  # extracted main source (Python code)
        self.build: Dict[str, Any] = {"status": "not started"}
        self.build_proc: Optional[subprocess.Popen] = None
        self.setup_ok = True

    def env(self, pythonpath: Optional[List[str]] = None) -> Dict[str, str]:
        env = dict(os.environ)
        paths = (pythonpath or self.pythonpath) + [p for p in [env.get("PYTHONPATH")] if p]
        env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1", MPLBACKEND="Agg",
                   DETECTRON2_DATASETS=os.path.join(self.work, "datasets"))
        if self.sizes.omp_threads:
            env["OMP_NUM_THREADS"] = str(self.sizes.omp_threads)
        return env

    def log(self, name: str) -> str:
        os.makedirs(os.path.join(self.work, "logs"), exist_ok=True)
        return os.path.join(self.work, "logs", name + ".log")


# ------------------------------------------------------------------------------------------
# Subprocesses
# ------------------------------------------------------------------------------------------
def _kill(proc: subprocess.Popen) -> None:
    """Kill the process group this run started for ``proc`` (its workers included)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_many(jobs: Sequence[Tuple[List[str], str]], timeout: float, env: Dict[str, str],
             parallel: int = 1, cwd: str = ROOT) -> List[Optional[int]]:
    """Run ``(command, log path)`` jobs, ``parallel`` at a time, all within ``timeout`` seconds;
    returns each exit status, None for a job killed at the deadline or never started."""
    deadline = time.time() + timeout
    codes: List[Optional[int]] = [None] * len(jobs)
    running: Dict[int, subprocess.Popen] = {}
    pending = list(range(len(jobs)))
    while (pending or running) and time.time() < deadline:
        while pending and len(running) < parallel:
            i = pending.pop(0)
            cmd, log = jobs[i]
            with open(log, "w") as f:
                f.write("$ " + " ".join(cmd) + "\n")
                f.flush()
                running[i] = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                              cwd=cwd, start_new_session=True)
        for i, proc in list(running.items()):
            if proc.poll() is not None:
                codes[i] = proc.returncode
                del running[i]
        time.sleep(0.2)
    for proc in running.values():
        _kill(proc)
    return codes


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _failed(codes: Sequence[Optional[int]], logs: Sequence[str], timeout: float) -> List[str]:
    out = []
    for code, log in zip(codes, logs):
        if code is None:
            out.append(f"{os.path.basename(log)}: timed out or not started within {timeout:.0f} s")
        elif code != 0:
            last = (tail(log, 3).strip().splitlines() or [""])[-1]
            out.append(f"{os.path.basename(log)}: exit {code}: {last[:300]}")
    return out


def _load_json(path: str) -> Optional[Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------
# Set-up
# ------------------------------------------------------------------------------------------
def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_bundle(bundle: str) -> Dict[str, Any]:
    """The bundle's manifest, every file checked against its sha256 (raises on a mismatch)."""
    manifest = _load_json(os.path.join(bundle, "manifest.json"))
    if manifest is None:
        raise RuntimeError(f"{bundle}/manifest.json missing or unreadable: run make gpu-prepare")
    for rel, entry in manifest["files"].items():
        path = os.path.join(bundle, rel)
        if not os.path.isfile(path) or _sha256(path) != entry["sha256"]:
            raise RuntimeError(f"{path}: missing or not the file make gpu-prepare wrote (sha256)")
    return manifest


_IMPORTS = ("import detectron2, fvcore, pycocotools, yacs, omegaconf, pseudo_iou, autoassign, "
            "anchor_free_app.engine, benchmarks.models; print('detectron2', "
            "detectron2.__version__, detectron2.__file__, flush=True)")


def _import_check(ctx: Context, pythonpath: List[str], log: str, timeout: float,
                  then: str = "") -> bool:
    """Whether the project and Detectron2 import with ``pythonpath`` (then runs ``then``)."""
    code = _IMPORTS + ("; " + then if then else "")
    return run_many([([ctx.python, "-c", code], log)], timeout, ctx.env(pythonpath))[0] == 0


def _cuda_arch(ctx: Context) -> Optional[str]:
    out = subprocess.run([ctx.python, "-c", "import torch; print('%d.%d' % "
                          "torch.cuda.get_device_capability())"], capture_output=True, text=True,
                         env=ctx.env())
    return out.stdout.strip() if out.returncode == 0 else None


def start_build(ctx: Context, manifest: Dict[str, Any]) -> None:
    """Detectron2 main's operators with CUDA (``setup.py build_ext --inplace`` in a copy of the
    source), in the background at low priority; :func:`wait_build` collects it."""
    candidates = [shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/nonexistent"),
                                                     "bin", "nvcc"), "/usr/local/cuda/bin/nvcc"]
    nvcc = next((c for c in candidates if c and os.path.isfile(c)), None)
    if ctx.device != "cuda":
        ctx.build = {"status": "skipped", "reason": "CPU mode: no CUDA operators to build"}
        return
    if not nvcc:
        ctx.build = {"status": "skipped",
                     "reason": "nvcc not found (PATH, CUDA_HOME, /usr/local/cuda)"}
        return
    if ctx.d2_source is None:
        ctx.build = {"status": "skipped", "reason": "no Detectron2 main source"}
        return
    arch = _cuda_arch(ctx) or "9.0"
    build_root = os.path.join(ctx.work, "d2build")
    shutil.rmtree(build_root, ignore_errors=True)
    shutil.unpack_archive(os.path.join(ctx.bundle, manifest["d2_source"]), build_root)
    src = os.path.join(build_root, os.listdir(build_root)[0])
    env = ctx.env()
    jobs = max(1, (os.cpu_count() or 2) // 2)
    env.update(FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=arch, MAX_JOBS=str(jobs),
               CUDA_HOME=os.path.dirname(os.path.dirname(nvcc)))
    log = ctx.log("setup_build_cuda_ops")
    with open(log, "w") as f:
        ctx.build_proc = subprocess.Popen(
            ["nice", "-n", "10", ctx.python, "setup.py", "build_ext", "--inplace"], cwd=src,
            stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    ctx.build = {"status": "running", "source": src, "arch": arch, "max_jobs": jobs,
                 "nvcc": nvcc, "started": time.time(), "log": log}


def wait_build(ctx: Context) -> Dict[str, Any]:
    """Wait for the background build until its limit; the build's record (status ok / failed /
    timed out / skipped, seconds)."""
    proc, build = ctx.build_proc, ctx.build
    if proc is None:
        return build
    limit_at = min(build["started"] + ctx.sizes.build_limit_s, ctx.deadline)
    try:
        proc.wait(timeout=max(0.0, limit_at - time.time()))
    except subprocess.TimeoutExpired:
        _kill(proc)
        build.update(status="timed out",
                     reason=f"not done within {limit_at - build['started']:.0f} s")
    ctx.build_proc = None
    build["seconds"] = round(time.time() - build.pop("started"), 1)
    if build["status"] == "running":
        if proc.returncode == 0:
            build["status"] = "ok"
        else:
            build.update(status="failed", reason=f"exit {proc.returncode}: "
                         + tail(build["log"], 4).strip())
    return build


def _pip_install(ctx: Context, target: str, wheels: List[str], log: str, timeout: float) -> bool:
    """``pip install --no-index --no-deps --target`` of bundled wheels; for the GPU machine's
    CPython 3.12 on the ``installed`` route (not importable here, not used)."""
    shutil.rmtree(target, ignore_errors=True)
    cmd = [ctx.python, "-m", "pip", "install", "--disable-pip-version-check", "-q",
           "--no-index", "--no-deps", "--no-compile", "--target", target]
    if ctx.route == "installed":
        cmd += WHEEL_PLATFORM
    return run_many([(cmd + wheels, log)], timeout, ctx.env([ROOT]))[0] == 0


def part_setup(ctx: Context, res: PartResult) -> None:
    """Install the bundle and choose the Detectron2 route (``--route``): ``auto`` (CUDA's
    default) Detectron2 main's Python code from the bundled archive, the pb1 wheel if it does
    not import; ``main`` / ``fallback`` one of them (a bundle made for this interpreter:
    ``tools/gpu_prepare.py --python-version X.Y``); ``installed`` (CPU's default) the running
    interpreter's packages, the bundle installed for CPython 3.12 and not used."""
    fig = res.figures
    limit = res.limit_s
    if not os.path.isdir(ctx.bundle):
        if ctx.route != "installed":
            res.reason = (f"no bundle at {ctx.bundle}: run make gpu-prepare where PyPI is "
                          "reachable and carry the folder")
            return
        fig["route"] = "running interpreter's packages"
        res.verdict, res.reason = "skipped", (
            f"no bundle at {ctx.bundle} (make gpu-prepare): CPU mode uses the running "
            "interpreter's packages")
    else:
        manifest = check_bundle(ctx.bundle)
        wheels = sorted(glob.glob(os.path.join(ctx.bundle, "wheels", "*.whl")))
        main_wheels = [w for w in wheels if "pb1_detectron2" not in os.path.basename(w)]
        site = os.path.join(ctx.work, "site")
        started = time.time()
        log = ctx.log("setup_install")
        res.logs.append(log)
        if not _pip_install(ctx, site, main_wheels, log, limit):
            res.reason = "pip install of the bundle failed: " + tail(log, 3)
            return
        fig["install_s"] = round(time.time() - started, 1)
        fig["wheels"] = [os.path.basename(w) for w in main_wheels]
        d2_root = os.path.join(ctx.work, "d2")
        shutil.rmtree(d2_root, ignore_errors=True)
        shutil.unpack_archive(os.path.join(ctx.bundle, manifest["d2_source"]), d2_root)
        ctx.d2_source = os.path.join(d2_root, os.listdir(d2_root)[0])
        # what Detectron2's setup.py links for its model_zoo (retinanet config of the bench)
        os.symlink(os.path.join("..", "..", "configs"),
                   os.path.join(ctx.d2_source, "detectron2", "model_zoo", "configs"))
        main_path = [ROOT, ctx.d2_source, site]
        log = ctx.log("setup_import_main")
        if ctx.route == "installed":
            fig["route"] = "running interpreter's packages (bundle installed for cp312, unused)"
        elif ctx.route != "fallback" and _import_check(ctx, main_path, log, 60):
            res.logs.append(log)
            ctx.pythonpath = main_path
            fig["route"] = f"Detectron2 main {manifest['d2_source']} (Python code)"
        elif ctx.route == "main":
            res.logs.append(log)
            res.reason = "Detectron2 main from the archive does not import: " + tail(log, 3)
            return
        else:  # the v0.6 fallback wheel
            if ctx.route == "auto":
                res.logs.append(log)
            fallback = os.path.join(ctx.work, "site_pb1")
            log = ctx.log("setup_install_pb1")
            res.logs.append(log)
            _pip_install(ctx, fallback, [w for w in wheels if w not in main_wheels], log, 60)
            ctx.pythonpath = [ROOT, fallback, site]
            ctx.d2_source = None
            fig["route"] = "pb1-detectron2 0.6 fallback" + (
                " (main did not import: see setup_import_main.log)" if ctx.route == "auto"
                else "")
        start_build(ctx, manifest)
    # The imports, then the built-in dataset, once, before the concurrent training runs.
    log = ctx.log("setup_import_dataset")
    res.logs.append(log)
    c = dict(zip(ctx.sizes.dataset[::2], ctx.sizes.dataset[1::2]))
    dataset = ("from anchor_free_app.data import generate_demo_shapes as g; g(num_train=%s, "
               "num_val=%s, image_size=%s)" % (c["DATASETS.DEMO_SHAPES.NUM_TRAIN"],
                                               c["DATASETS.DEMO_SHAPES.NUM_VAL"],
                                               c["DATASETS.DEMO_SHAPES.IMAGE_SIZE"]))
    started = time.time()
    if not _import_check(ctx, ctx.pythonpath, log, limit, then=dataset):
        res.verdict, res.reason = "fail", ("the project does not import or the built-in dataset "
                                           "was not generated: " + tail(log, 3))
        return
    fig["import_and_dataset_s"] = round(time.time() - started, 1)
    fig["detectron2"] = next((line.strip() for line in open(log)
                              if line.startswith("detectron2 ")), None)
    fig["build"] = {k: v for k, v in ctx.build.items() if k != "started"}
    if res.verdict != "skipped":
        res.verdict = "pass"


# ------------------------------------------------------------------------------------------
# 1. Training, AMP vs float32
# ------------------------------------------------------------------------------------------
_SPEED = re.compile(r"Overall training speed: (\d+) iterations in \S+ \(([\d.]+) s / it\)")
_COPYPASTE = re.compile(r"copypaste: (.*)$")


def parse_ap(log: str) -> Optional[Dict[str, float]]:
    """The last COCO table a Detectron2 log printed (``copypaste:`` lines) as {metric: value}."""
    try:
        with open(log, errors="replace") as f:
            lines = [m.group(1).strip() for m in map(_COPYPASTE.search, f) if m]
    except OSError:
        return None
    for i in range(len(lines) - 1, 0, -1):
        if lines[i - 1].startswith("AP,"):
            return {k: float(v) for k, v in zip(lines[i - 1].split(","), lines[i].split(","))}
    return None


def parse_training(output_dir: str, log: str) -> Dict[str, Any]:
    """Iterations per second (Detectron2's 'Overall training speed'), the logged total losses
    (``metrics.json``) and whether all are finite."""
    out: Dict[str, Any] = {}
    text = open(log, errors="replace").read() if os.path.exists(log) else ""
    speed = _SPEED.findall(text)
    if speed:  # Detectron2 times the iterations after its first few
        out["timed_iterations"] = int(speed[-1][0])
        out["it_per_s"] = round(1 / float(speed[-1][1]), 2)
    losses, last_iter = [], -1
    for line in open(os.path.join(output_dir, "metrics.json")) if os.path.exists(
            os.path.join(output_dir, "metrics.json")) else []:
        entry = json.loads(line)
        if "total_loss" in entry:
            losses.append(entry["total_loss"])
            last_iter = max(last_iter, entry.get("iteration", -1))
    out["iterations_done"] = last_iter + 1
    out["losses_logged"] = len(losses)
    out["last_total_loss"] = losses[-1] if losses else None
    out["losses_finite"] = bool(losses) and all(math.isfinite(v) for v in losses)
    return out


def part_train(ctx: Context, res: PartResult) -> None:
    s = ctx.sizes
    started = time.time()
    runs = []  # (config name, precision, output dir)
    jobs = []
    for name in s.train_configs:
        config, node = DEMO[name]
        for precision in ("fp32", "amp"):
            out = os.path.join(ctx.work, "train", f"{name}_{precision}")
            shutil.rmtree(out, ignore_errors=True)
            amp = precision == "amp" and ctx.device == "cuda"
            opts = s.dataset + s.train_opts + ["MODEL.DEVICE", ctx.device, "SOLVER.AMP.ENABLED",
                                               str(amp)]
            if ctx.device == "cpu":  # detections after 3 iterations: an AP to compare
                opts += [f"MODEL.{node}.SCORE_THRESH_TEST", "0.0"]
            runs.append((name, precision, out, config, opts))
            jobs.append(([ctx.python, "train_net.py", "--config-file", config] + opts
                         + ["OUTPUT_DIR", out], ctx.log(f"train_{name}_{precision}")))
    codes = run_many(jobs, res.limit_s, ctx.env(), parallel=s.train_parallel)
    logs = [log for _, log in jobs]
    res.logs += logs
    problems = _failed(codes, logs, res.limit_s)
    eval_jobs = []
    for name, precision, out, config, opts in runs:
        eval_jobs.append(([ctx.python, "train_net.py", "--config-file", config, "--eval-only"]
                          + opts + ["OUTPUT_DIR", os.path.join(out, "eval"), "MODEL.WEIGHTS",
                                    os.path.join(out, "model_final.pth")],
                          ctx.log(f"eval_{name}_{precision}")))
    remaining = max(0.0, res.limit_s - (time.time() - started))
    eval_codes = run_many(eval_jobs, remaining, ctx.env(), parallel=s.train_parallel)
    eval_logs = [log for _, log in eval_jobs]
    res.logs += eval_logs
    problems += _failed(eval_codes, eval_logs, remaining)
    table: Dict[str, Dict[str, Any]] = {}
    for (name, precision, out, _, _), (_, log), (_, eval_log) in zip(runs, jobs, eval_jobs):
        entry = parse_training(out, log)
        entry["ap_after_training"] = (parse_ap(log) or {}).get("AP")
        entry["eval_only"] = parse_ap(eval_log)
        table.setdefault(name, {})[precision] = entry
        if not entry["losses_finite"]:
            problems.append(f"{name} {precision}: losses not finite or not logged")
        if entry["iterations_done"] != s.train_iters:
            problems.append(f"{name} {precision}: {entry['iterations_done']} of {s.train_iters} "
                            "iterations logged")
        if entry["eval_only"] is None:
            problems.append(f"{name} {precision}: no AP from --eval-only")
        elif (entry["ap_after_training"] is None or not abs(
                entry["eval_only"]["AP"] - entry["ap_after_training"]) <= ROUND_TRIP_AP_TOL):
            problems.append(f"{name} {precision}: AP of the saved model (--eval-only) "
                            f"{entry['eval_only']['AP']} != AP after training "
                            f"{entry['ap_after_training']}")
    for name, entry in table.items():
        aps = [entry[p]["eval_only"]["AP"] for p in ("fp32", "amp") if entry[p]["eval_only"]]
        if len(aps) == 2:
            entry["ap_amp_minus_fp32"] = round(aps[1] - aps[0], 3)
            if not abs(aps[1] - aps[0]) <= ctx.ap_margin:
                problems.append(f"{name}: AP under AMP {aps[1]:.2f} vs float32 {aps[0]:.2f}, "
                                f"beyond the margin {ctx.ap_margin}")
    res.figures = {"iterations": s.train_iters, "concurrent_runs": s.train_parallel,
                   "ap_margin": ctx.ap_margin, "configs": table}
    if ctx.device == "cpu":
        res.figures["note"] = ("CPU mode: the 'amp' runs are float32 (Detectron2's AMPTrainer "
                               "needs CUDA); they check the plumbing, not AMP")
    res.verdict = "fail" if problems else "pass"
    res.reason = "; ".join(problems)


# ------------------------------------------------------------------------------------------
# 2. Benchmark, 3. synchronisations
# ------------------------------------------------------------------------------------------
def _ms(entry: Dict[str, Any], key: str) -> Optional[float]:
    value = (entry.get(key) or {}).get("median_ms")
    return None if value is None else round(value, 2)


def part_bench(ctx: Context, res: PartResult) -> None:
    out = os.path.join(ctx.work, "bench")
    log = ctx.log("bench")
    res.logs.append(log)
    cmd = [ctx.python, "benchmarks/benchmark.py", "--output", out, "--plot",
           os.path.join(out, f"benchmark_scaling_{ctx.device}.png")] + ctx.sizes.bench_args
    code = run_many([(cmd, log)], res.limit_s, ctx.env())[0]
    report = _load_json(os.path.join(out, f"benchmark_{ctx.device}.json"))
    if code != 0 or report is None:
        res.reason = "; ".join(_failed([code], [log], res.limit_s)) or "no benchmark JSON"
        return
    models, errors = {}, []
    for name, entry in report["results"].items():
        if "error" in entry:
            errors.append(f"{name}: {entry['error'][:200]}")
            continue
        models[name] = {k: _ms(entry, k) for k in ("train", "inference", "assign_loss",
                                                   "postprocess")}
        models[name]["peak_mib_train"] = round(entry["peak_mib"].get("train") or 0, 1)
        models[name]["ratio_to_fcos"] = {k: round(v, 3) for k, v in
                                         entry.get("ratio_to_fcos", {}).items()
                                         if k in ("train", "inference", "assign_loss")}
    sweep: Dict[str, Any] = {}
    most = max(report["settings"]["sweep_boxes"], default=0)
    for row in report["sweep"]:
        for name, entry in row["models"].items():
            if "error" in entry:
                errors.append(f"sweep {row['kind']} {row['image_size']} {name}: "
                              f"{entry['error'][:200]}")
        if row["kind"] == "boxes" and row["boxes_per_image"] == most:
            sweep = {n: {"ms": round(e["median_ms"], 2), "peak_mib": round(e["peak_mib"], 1)}
                     for n, e in row["models"].items() if "median_ms" in e}
    res.figures = {"settings": {k: report["settings"][k] for k in
                                ("depth", "batch_size", "image_size", "boxes", "iters")},
                   "models": models, f"sweep_{most}_boxes_per_image": sweep,
                   "targets": report["targets"], "markdown": f"bench/benchmark_{ctx.device}.md"}
    res.verdict = "fail" if errors else "pass"
    res.reason = "; ".join(errors)


def part_syncs(ctx: Context, res: PartResult) -> None:
    out = os.path.join(ctx.work, "syncs")
    log = ctx.log("syncs")
    res.logs.append(log)
    cmd = [ctx.python, "benchmarks/benchmark.py", "--syncs", "--output", out]
    code = run_many([(cmd + ctx.sizes.syncs_args, log)], res.limit_s, ctx.env())[0]
    report = _load_json(os.path.join(out, f"syncs_{ctx.device}.json"))
    if code != 0 or report is None:
        res.reason = "; ".join(_failed([code], [log], res.limit_s)) or "no syncs JSON"
        return
    problems, points = [], []
    for row in report["syncs"]:
        point = {"images": row["images"], "boxes": row["boxes_per_image"], "models": {}}
        for name, entry in row["models"].items():
            if "error" in entry:
                problems.append(f"{name}: {entry['error'][:200]}")
                continue
            cuda = entry.get("cuda_debug_mode", {}).get("total")
            point["models"][name] = {"syncs_py": entry["total"],
                                     "without_inputs": entry["without_inputs"],
                                     "set_sync_debug_mode": cuda}
            if cuda is not None and cuda != entry["total"] and name in ("PseudoIoU",
                                                                          "AutoAssign"):
                problems.append(f"{name} at {row['images']} img x {row['boxes_per_image']} boxes: "
                                f"set_sync_debug_mode {cuda}, benchmarks/syncs.py "
                                f"{entry['total']}")
        points.append(point)
    problems += [f"target missed: {t['target']} ({t['value']})" for t in report["targets"]
                 if t["holds"] is False]
    res.figures = {"points": points, "targets": report["targets"],
                   "markdown": f"syncs/syncs_{ctx.device}.md"}
    if ctx.device == "cpu":
        res.figures["note"] = "CPU mode: no set_sync_debug_mode count (CUDA only)"
    res.verdict = "fail" if problems else "pass"
    res.reason = "; ".join(problems)


# ------------------------------------------------------------------------------------------
# 4. DCN, 5. export, 6. launch
# ------------------------------------------------------------------------------------------
def part_dcn(ctx: Context, res: PartResult) -> None:
    if ctx.device != "cuda":
        res.verdict, res.reason = "skipped", ("no CUDA: Detectron2's deformable convolution "
                                              "trains on CUDA only")
        return
    build = wait_build(ctx)
    res.figures["build"] = {k: v for k, v in build.items() if k != "log"}
    if build.get("log"):
        res.logs.append(build["log"])
    if build["status"] != "ok":
        res.verdict = "skipped"
        res.reason = f"Detectron2's CUDA operators not built ({build['status']}: " \
                     f"{build.get('reason', '')})"[:600]
        return
    out = os.path.join(ctx.work, "dcn")
    opts = ["MODEL.WEIGHTS", "", "MODEL.PSEUDO_IOU.NUM_CLASSES", "4", "DATASETS.TRAIN",
            "('demo_shapes_train',)", "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "8",
            "SOLVER.MAX_ITER", "20", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "10",
            "SOLVER.CHECKPOINT_PERIOD", "100000", "DATALOADER.NUM_WORKERS", "2", "SEED", "42",
            "MODEL.DEVICE", "cuda", "OUTPUT_DIR", out] + ctx.sizes.dataset
    log = ctx.log("dcn")
    res.logs.append(log)
    pythonpath = [ROOT, build["source"]] + ctx.pythonpath[2:]
    code = run_many([([ctx.python, "train_net.py", "--config-file", DCN_CONFIG] + opts, log)],
                    res.limit_s, ctx.env(pythonpath))[0]
    res.figures.update(parse_training(out, log))
    problems = _failed([code], [log], res.limit_s)
    if not res.figures["losses_finite"] or res.figures["iterations_done"] != 20:
        problems.append(f"{res.figures['iterations_done']} of 20 iterations logged, losses "
                        f"finite: {res.figures['losses_finite']}")
    res.verdict = "fail" if problems else "pass"
    res.reason = "; ".join(problems)


def part_export(ctx: Context, res: PartResult) -> None:
    out = os.path.join(ctx.work, "export")
    cmd = [ctx.python, "tools/gpu_check_parts.py", "export", "--device", ctx.device, "--output",
           out]
    for name in ctx.sizes.export_models:  # the float32 models of part 1, if there
        weights = os.path.join(ctx.work, "train", f"{name}_fp32", "model_final.pth")
        cmd += ["--model", f"{name}={DEMO[name][0]}:{weights}"]
    log = ctx.log("export")
    res.logs.append(log)
    size = ctx.sizes.dataset[ctx.sizes.dataset.index("INPUT.MIN_SIZE_TEST") + 1]
    opts = ["INPUT.MIN_SIZE_TEST", size, "INPUT.MAX_SIZE_TEST", size]
    code = run_many([(cmd + opts, log)], res.limit_s, ctx.env())[0]
    report = _load_json(os.path.join(out, "export.json"))
    if report is None:
        res.reason = "; ".join(_failed([code], [log], res.limit_s)) or "no export JSON"
        return
    problems = []
    for name, model in report["models"].items():
        res.figures[name] = {"weights": model["weights"]}
        for fmt, e in model["formats"].items():
            images = e.get("images", [])
            res.figures[name][fmt] = {
                "ran_on": e.get("ran_on"), "ok": e.get("ok"), "note": e.get("note"),
                "detections": [i["num_reference"] for i in images],
                "unmatched": sum(i["unmatched_reference"] + i["unmatched_other"] for i in images),
                "max_box_diff_px": max([i["max_box_diff"] for i in images], default=None),
                "max_score_diff": max([i["max_score_diff"] for i in images], default=None)}
            if not e.get("ok"):
                problems.append(f"{name} {fmt}: " + (e.get("error") or "differs from eager"))
    if code != 0 and not problems:
        problems = _failed([code], [log], res.limit_s)
    res.verdict = "fail" if problems else "pass"
    res.reason = "; ".join(problems)[:1000]


def part_launch(ctx: Context, res: PartResult) -> None:
    out = os.path.join(ctx.work, "launch")
    name = "pseudo_iou"
    node = DEMO[name][1]
    iters = "20" if ctx.device == "cuda" else "2"
    opts = ctx.sizes.dataset + ctx.sizes.train_opts + ["SOLVER.MAX_ITER", iters,
                                                       f"MODEL.{node}.SCORE_THRESH_TEST", "0.0"]
    cmd = [ctx.python, "tools/gpu_check_parts.py", "launch", "--device", ctx.device, "--output",
           out, "--config-file", DEMO[name][0]] + opts
    log = ctx.log("launch")
    res.logs.append(log)
    code = run_many([(cmd, log)], res.limit_s, ctx.env())[0]
    report = _load_json(os.path.join(out, "launch.json"))
    res.figures = report or {}
    if code != 0 or not report or not report.get("ok"):
        res.reason = "; ".join(_failed([code], [log], res.limit_s)) or "launch check failed"
        return
    res.verdict = "pass"


PART_FUNCTIONS = {"setup": part_setup, "train": part_train, "bench": part_bench,
                  "syncs": part_syncs, "dcn": part_dcn, "export": part_export,
                  "launch": part_launch}


# ------------------------------------------------------------------------------------------
# The run and its summary
# ------------------------------------------------------------------------------------------
def machine_info(ctx: Context) -> Dict[str, Any]:
    code = ("import json, platform, torch; print(json.dumps({'python': platform.python_version(),"
            " 'torch': torch.__version__, 'cuda': torch.version.cuda, 'gpu': "
            "torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "
            "'cpus': __import__('os').cpu_count()}))")
    out = subprocess.run([ctx.python, "-c", code], capture_output=True, text=True, env=ctx.env())
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": out.stderr[-500:]}


def run_part(ctx: Context, name: str) -> PartResult:
    res = PartResult(name, TITLES[name])
    remaining = ctx.deadline - time.time()
    res.limit_s = round(min(ctx.limits[name], remaining), 1)
    if name != "setup" and not ctx.setup_ok:
        res.reason = "not run: the set-up failed"
        return res
    if name != "dcn" and res.limit_s < 5:  # dcn may still report a skip
        res.reason = f"not run: the run's time budget was spent ({remaining:.0f} s left)"
        return res
    started = time.time()
    res.build_running = ctx.build_proc is not None and ctx.build_proc.poll() is None
    print(f"[gpu-check] {name}: {TITLES[name]} (limit {res.limit_s:.0f} s)", flush=True)
    try:
        PART_FUNCTIONS[name](ctx, res)
    except Exception as e:  # a broken part is a verdict, the run goes on
        res.verdict, res.reason = "fail", f"{type(e).__name__}: {e}"
    if name == "setup" and res.verdict == "fail":
        ctx.setup_ok = False
    res.seconds = round(time.time() - started, 1)
    res.logs = [os.path.relpath(p, ctx.work) for p in res.logs]
    print(f"[gpu-check] {name}: {res.verdict.upper()} in {res.seconds} s"
          + (f": {res.reason[:300]}" if res.reason else ""), flush=True)
    return res


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def markdown(summary: Dict[str, Any]) -> str:
    m = summary["machine"]
    lines = [f"# GPU acceptance run: {summary['verdict'].upper()}", "",
             f"{summary['date_utc']}, device `{summary['device']}`: {m.get('gpu') or 'no GPU'}, "
             f"Python {m.get('python')}, torch {m.get('torch')} (CUDA {m.get('cuda')}), "
             f"{m.get('cpus')} CPUs; {summary['wall_s']} s of a {summary['budget_s']} s budget.",
             "", f"Command: `{summary['command']}`", "",
             "| part | verdict | seconds (limit) | reason |", "|---|---|---|---|"]
    for p in summary["parts"]:
        reason = p["reason"].replace("|", "/").replace("\n", " ")[:300]
        build = " (CUDA ops building meanwhile)" if p["build_running"] else ""
        lines.append(f"| {p['title']} | **{p['verdict']}** | {p['seconds']} ({p['limit_s']})"
                     f"{build} | {reason} |")
    parts = {p["name"]: p for p in summary["parts"]}
    train = parts.get("train", {}).get("figures", {})
    if train.get("configs"):
        lines += ["", f"## 1. Training: {train['iterations']} iterations, "
                  f"{train['concurrent_runs']} runs at once, AP margin {train['ap_margin']}", "",
                  "| config | precision | it/s | last total loss | AP after training | "
                  "AP --eval-only | AP50 |", "|---|---|---|---|---|---|---|"]
        for name, entry in train["configs"].items():
            for precision in ("fp32", "amp"):
                e = entry.get(precision, {})
                ev = e.get("eval_only") or {}
                loss = e.get("last_total_loss")
                lines.append(f"| {name} | {precision} | {_cell(e.get('it_per_s'))} | "
                             f"{_cell(None if loss is None else round(loss, 4))} | "
                             f"{_cell(e.get('ap_after_training'))} | {_cell(ev.get('AP'))} | "
                             f"{_cell(ev.get('AP50'))} |")
        if train.get("note"):
            lines += ["", train["note"]]
    bench = parts.get("bench", {}).get("figures", {})
    if bench.get("models"):
        b = bench["settings"]
        lines += ["", f"## 2. Benchmark: R-{b['depth']}-FPN, {b['batch_size']} x "
                  f"{b['image_size'][0]}x{b['image_size'][1]}, {b['boxes']} boxes per image, "
                  f"median of {b['iters']} (ms; ratios to FCOS)", "",
                  "| model | train | inference | assign + loss | peak MiB train | ratios |",
                  "|---|---|---|---|---|---|"]
        for name, e in bench["models"].items():
            lines.append(f"| {name} | {_cell(e['train'])} | {_cell(e['inference'])} | "
                         f"{_cell(e['assign_loss'])} | {e['peak_mib_train']} | "
                         f"{e['ratio_to_fcos']} |")
        for key, value in bench.items():
            if key.startswith("sweep_"):
                lines += ["", f"{key}: {value}"]
        lines += [""] + [f"- {t['target']}: {t['value']} "
                         f"({'holds' if t['holds'] else 'missed' if t['holds'] is False else '-'})"
                         for t in bench.get("targets", [])]
    syncs = parts.get("syncs", {}).get("figures", {})
    if syncs.get("points"):
        lines += ["", "## 3. Synchronisations per iteration (syncs.py total / "
                  "set_sync_debug_mode)", "", "| images x boxes | " + " | ".join(
                      syncs["points"][0]["models"]) + " |",
                  "|---|" + "---|" * len(syncs["points"][0]["models"])]
        for pt in syncs["points"]:
            lines.append(f"| {pt['images']} x {pt['boxes']} | " + " | ".join(
                f"{e['syncs_py']} / {_cell(e['set_sync_debug_mode'])}"
                for e in pt["models"].values()) + " |")
    for name in ("setup", "dcn", "export", "launch"):
        figures = parts.get(name, {}).get("figures")
        if figures:
            lines += ["", f"## {TITLES[name]}", "", "```json",
                      json.dumps(figures, indent=1)[:3000], "```"]
    lines += ["", "Logs and each part's own results: gpu_check_artifacts.tar.gz."]
    return "\n".join(lines) + "\n"


def write_outputs(ctx: Context, summary: Dict[str, Any], output: str) -> None:
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "gpu_check.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(output, "gpu_check.md"), "w") as f:
        f.write(markdown(summary))
    keep = (".log", ".json", ".md", ".png", ".txt")
    with tarfile.open(os.path.join(output, "gpu_check_artifacts.tar.gz"), "w:gz") as tar:
        for folder in ("logs", "bench", "syncs", "export", "launch", "train", "dcn"):
            for path in sorted(glob.glob(os.path.join(ctx.work, folder, "**", "*"),
                                         recursive=True)):
                if (path.endswith(keep) and os.path.isfile(path)
                        and "instances_results" not in path):
                    tar.add(path, arcname=os.path.relpath(path, ctx.work))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--bundle", default=os.path.join(ROOT, "gpu_bundle"),
                        help="folder written by make gpu-prepare")
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "gpu_check"),
                        help="gpu_check.json, gpu_check.md, gpu_check_artifacts.tar.gz")
    parser.add_argument("--work", default=None,
                        help="scratch folder (default: <output>_work; replaced)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)} (setup always runs)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run (default: cuda 480, cpu 600)")
    parser.add_argument("--part-limit", action="append", default=[], metavar="PART=SECONDS",
                        help="override one part's time limit")
    parser.add_argument("--ap-margin", type=float, default=None,
                        help="largest |AP(AMP) - AP(float32)| of part 1, AP points")
    parser.add_argument("--route", choices=("auto", "main", "fallback", "installed"), default=None,
                        help="Detectron2 for the parts: auto (cuda's default: main's Python code "
                             "from the bundle, else the pb1 wheel), main, fallback, or installed "
                             "(cpu's default: the running interpreter's); main / fallback on the "
                             "CPU need a bundle made for this Python (gpu_prepare.py "
                             "--python-version)")
    parser.add_argument("--python", default=None, help="interpreter of the parts (default: this)")
    args = parser.parse_args(argv)
    args.work = args.work or os.path.abspath(args.output).rstrip("/") + "_work"
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"--parts: unknown {sorted(unknown)}; choose from {PARTS}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    ctx = Context(args)
    shutil.rmtree(ctx.work, ignore_errors=True)
    os.makedirs(ctx.work)
    chosen = set(args.parts.split(",")) | {"setup"}
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results: Dict[str, PartResult] = {}
    try:
        for name in RUN_ORDER:
            if name in chosen:
                results[name] = run_part(ctx, name)
    finally:
        if ctx.build_proc is not None:  # not waited for (dcn not chosen): stop it
            _kill(ctx.build_proc)
    parts = [asdict(results[n]) for n in PARTS if n in results]
    failed = [p["name"] for p in parts if p["verdict"] == "fail"]
    summary = {
        "verdict": "fail" if failed else "pass", "failed_parts": failed,
        "device": ctx.device, "date_utc": date, "budget_s": round(ctx.deadline - ctx.started),
        "wall_s": round(time.time() - ctx.started, 1),
        "command": " ".join(["tools/gpu_check.py"] + list(argv if argv is not None
                                                         else sys.argv[1:])),
        "machine": machine_info(ctx), "parts": parts,
    }
    write_outputs(ctx, summary, args.output)
    print(markdown(summary))
    print(f"[gpu-check] {summary['verdict'].upper()} in {summary['wall_s']} s; wrote "
          f"{args.output}/gpu_check.{{json,md}}, gpu_check_artifacts.tar.gz", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
