"""The GPU acceptance run's CPU mode (``tools/gpu_check.py --device cpu``, what ``make gpu-check
DEVICE=cpu`` runs): every part's plumbing and the summary, on a small bundle made here (one wheel,
one source archive) so that the install step runs too; and that a failing part makes the run
exit non-zero. About a minute on an idle 2-core machine."""
import dataclasses
import hashlib
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "tools", "gpu_check.py")
PROBE_WHEEL = "gpu_check_probe-0.1-py3-none-any.whl"


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load_gpu_check()


def _make_bundle(folder: str) -> None:
    """A bundle as tools/gpu_prepare.py writes it, small: one pure-Python wheel and a source
    archive with Detectron2's model_zoo package folder, listed with their sha256."""
    os.makedirs(os.path.join(folder, "wheels"))
    info = "gpu_check_probe-0.1.dist-info"
    files = {
        "gpu_check_probe/__init__.py": "VALUE = 1\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: gpu-check-probe\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    with zipfile.ZipFile(os.path.join(folder, "wheels", PROBE_WHEEL), "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n")
    with tarfile.open(os.path.join(folder, "detectron2-probe.tar.gz"), "w:gz") as tar:
        data = b"# probe\n"
        member = tarfile.TarInfo("detectron2-probe/detectron2/model_zoo/__init__.py")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    entries = {}
    for rel in (f"wheels/{PROBE_WHEEL}", "detectron2-probe.tar.gz"):
        with open(os.path.join(folder, rel), "rb") as f:
            data = f.read()
        entries[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump({"d2_source": "detectron2-probe.tar.gz", "files": entries}, f)


def _run(tmp_path, *args: str):
    output = os.path.join(tmp_path, "out")
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--device", "cpu", "--output", output, *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    path = os.path.join(output, "gpu_check.json")
    assert os.path.isfile(path), proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(path) as f:
        return proc, json.load(f), output


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("gpu_check"))
    bundle = os.path.join(tmp, "bundle")
    _make_bundle(bundle)
    proc, summary, output = _run(tmp, "--bundle", bundle)
    return proc, summary, output


def test_cpu_mode_passes_every_part(cpu_run):
    proc, summary, output = cpu_run
    parts = {p["name"]: p for p in summary["parts"]}
    assert [p["name"] for p in summary["parts"]] == list(gpu_check.PARTS)
    verdicts = {name: p["verdict"] for name, p in parts.items()}
    assert verdicts == {"setup": "pass", "train": "pass", "bench": "pass", "syncs": "pass",
                        "dcn": "skipped", "export": "pass", "launch": "pass"}, (
        {n: p["reason"] for n, p in parts.items()}, proc.stdout[-3000:])
    assert proc.returncode == 0 and summary["verdict"] == "pass" and not summary["failed_parts"]
    assert "CUDA" in parts["dcn"]["reason"]
    assert summary["machine"]["python"] and summary["device"] == "cpu"


def test_cpu_mode_setup_installs_the_bundle(cpu_run):
    _, summary, output = cpu_run
    setup = summary["parts"][0]
    assert setup["figures"]["wheels"] == [PROBE_WHEEL]
    work = output + "_work"
    assert os.path.isfile(os.path.join(work, "site", "gpu_check_probe", "__init__.py"))
    link = os.path.join(work, "d2", "detectron2-probe", "detectron2", "model_zoo", "configs")
    assert os.readlink(link) == os.path.join("..", "..", "configs")
    assert setup["figures"]["build"]["status"] == "skipped"


def test_cpu_mode_training_figures(cpu_run):
    _, summary, _ = cpu_run
    train = next(p for p in summary["parts"] if p["name"] == "train")["figures"]
    assert set(train["configs"]) == set(gpu_check.SIZES["cpu"].train_configs)
    for name, entry in train["configs"].items():
        for precision in ("fp32", "amp"):
            e = entry[precision]
            assert e["iterations_done"] == gpu_check.SIZES["cpu"].train_iters
            assert e["timed_iterations"] >= 1 and e["it_per_s"] > 0 and e["losses_finite"] and e["losses_logged"] >= 1
            # the saved model's AP (--eval-only) is the AP at the end of training
            assert e["eval_only"]["AP"] == e["ap_after_training"]
            assert math.isfinite(e["eval_only"]["AP50"])
        # CPU mode: the AMP run is a float32 stand-in with the same seed: the same model
        assert entry["ap_amp_minus_fp32"] == 0
        assert entry["fp32"]["last_total_loss"] == entry["amp"]["last_total_loss"]


def test_cpu_mode_part_figures(cpu_run):
    _, summary, output = cpu_run
    parts = {p["name"]: p["figures"] for p in summary["parts"]}
    models = parts["bench"]["models"]
    assert set(models) == {"PseudoIoU", "AutoAssign", "RetinaNet", "FCOS"}
    assert all(m["train"] > 0 and m["inference"] > 0 for m in models.values())
    assert models["FCOS"]["ratio_to_fcos"]["train"] == 1.0
    for point in parts["syncs"]["points"]:
        for name in ("PseudoIoU", "AutoAssign", "FCOS"):
            counts = point["models"][name]
            assert counts["syncs_py"] >= counts["without_inputs"] >= 1
            assert counts["set_sync_debug_mode"] is None  # CUDA only
    export = parts["export"]["pseudo_iou"]
    assert export["weights"].endswith(os.path.join("pseudo_iou_fp32", "model_final.pth"))
    for fmt in ("torchscript", "onnx"):
        assert export[fmt]["ok"] and export[fmt]["unmatched"] == 0
        assert min(export[fmt]["detections"]) > 0
    launch = parts["launch"]
    assert launch["backend"] == "gloo" and launch["world_size"] == 1 and launch["all_reduce_ok"]
    assert len(launch["ddp_losses"]) == 2 and all(map(math.isfinite, launch["ddp_losses"]))
    text = open(os.path.join(output, "gpu_check.md")).read()
    for title in gpu_check.TITLES.values():
        assert title in text
    with tarfile.open(os.path.join(output, "gpu_check_artifacts.tar.gz")) as tar:
        names = tar.getnames()
    assert "logs/launch.log" in names and "bench/benchmark_cpu.json" in names


def test_failing_part_exits_nonzero(tmp_path):
    bundle = os.path.join(tmp_path, "bundle")
    _make_bundle(bundle)
    with open(os.path.join(bundle, "wheels", PROBE_WHEEL), "ab") as f:
        f.write(b"\0")  # no longer the file the manifest lists
    proc, summary, _ = _run(str(tmp_path), "--bundle", bundle, "--parts", "setup")
    assert proc.returncode == 1
    assert summary["verdict"] == "fail" and summary["failed_parts"] == ["setup"]
    assert "sha256" in summary["parts"][0]["reason"] and PROBE_WHEEL in summary["parts"][0]["reason"]


def test_part_past_its_limit_is_killed(tmp_path):
    log = os.path.join(tmp_path, "sleep.log")
    jobs = [([sys.executable, "-c", "import time; time.sleep(60)"], log),
            ([sys.executable, "-c", "raise SystemExit(3)"], os.path.join(tmp_path, "exit.log"))]
    codes = gpu_check.run_many(jobs, timeout=3, env=dict(os.environ), parallel=2)
    assert codes == [None, 3]
    problems = gpu_check._failed(codes, [log for _, log in jobs], 3)
    assert "timed out" in problems[0] and "exit 3" in problems[1]


@pytest.mark.parametrize("setup_py,status", [
    ("import os; open('env.txt', 'w').write(os.environ['TORCH_CUDA_ARCH_LIST'] + ' ' + "
     "os.environ['FORCE_CUDA'] + ' ' + os.environ['MAX_JOBS'])", "ok"),
    ("raise SystemExit('no Python.h')", "failed"),
    ("import time; time.sleep(60)", "timed out"),
])
def test_cuda_operator_build_in_background(tmp_path, monkeypatch, setup_py, status):
    """The GPU mode's background build of Detectron2's operators and what the DCN part makes of
    it, with a stand-in nvcc and a source archive whose setup.py stands in for Detectron2's."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nvcc").write_text("#!/bin/sh\n")
    (bindir / "nvcc").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(gpu_check, "_cuda_arch", lambda ctx: "9.0")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    with tarfile.open(bundle / "d2.tar.gz", "w:gz") as tar:
        data = setup_py.encode()
        member = tarfile.TarInfo("d2-src/setup.py")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    args = gpu_check.parse_args(["--device", "cpu", "--bundle", str(bundle), "--output",
                                 str(tmp_path / "out")])
    ctx = gpu_check.Context(args)
    ctx.device, ctx.d2_source = "cuda", str(tmp_path)
    ctx.sizes = dataclasses.replace(ctx.sizes, build_limit_s=3)
    os.makedirs(ctx.work)
    gpu_check.start_build(ctx, {"d2_source": "d2.tar.gz"})
    assert ctx.build["status"] == "running" and ctx.build["arch"] == "9.0"
    build = gpu_check.wait_build(ctx)
    assert build["status"] == status and build["seconds"] < 30
    if status == "ok":
        env = open(os.path.join(build["source"], "env.txt")).read().split()
        assert env[:2] == ["9.0", "1"] and int(env[2]) >= 1
        return
    res = gpu_check.PartResult("dcn", gpu_check.TITLES["dcn"], limit_s=60)
    gpu_check.part_dcn(ctx, res)
    assert res.verdict == "skipped" and status in res.reason
    if status == "failed":
        assert "no Python.h" in res.reason
