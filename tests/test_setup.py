"""The set-up (tools/setup_env.sh) produced a working environment of its route, and the set-up,
Makefile, CI script and README agree on the commands and pins."""
import importlib
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import detectron2
from anchor_free.backbone import compiled_ops_available

ROUTE = "main" if compiled_ops_available() else "fallback"


def _version(text: str):
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def _stamp_kind() -> str:
    stamp = os.path.join(sys.prefix, ".setup-done")
    assert os.path.isfile(stamp), f"tools/setup_env.sh did not finish in {sys.prefix}"
    with open(stamp) as f:
        kinds = re.findall(r"^kind=(\w+)$", f.read(), flags=re.M)
    assert kinds, f"{stamp} names no route (kind=...): rerun tools/setup_env.sh"
    return kinds[0]


def test_versions_and_packages():
    assert torch.__version__.startswith("2.14.1")
    import cv2  # noqa: F401
    import fvcore  # noqa: F401
    import numpy
    import PIL
    import pycocotools  # noqa: F401

    assert _stamp_kind() == ROUTE
    if ROUTE == "fallback":  # v0.6 code: np.bool and PIL.Image.LINEAR
        assert _version(numpy.__version__) < (1, 24), numpy.__version__
        assert _version(PIL.__version__) < (10, 0), PIL.__version__
    # both detectors are registered by importing their packages
    from detectron2.modeling import META_ARCH_REGISTRY

    importlib.import_module("pseudo_iou")
    importlib.import_module("autoassign")
    assert "PseudoIoU" in META_ARCH_REGISTRY and "AutoAssign" in META_ARCH_REGISTRY


def test_declared_minimum_torch_is_what_the_code_needs(repo_root):
    with open(os.path.join(repo_root, "pyproject.toml")) as f:
        floor = re.search(r'"torch>=([\d.]+)"', f.read())
    assert floor and _version(floor.group(1)) == (1, 12)
    assert _version(torch.__version__) >= (1, 12)
    # the API behind the floor (torch 1.12): scatter_reduce with include_self
    out = torch.zeros(2).scatter_reduce(
        0, torch.tensor([0, 0, 1]), torch.tensor([3.0, -1.0, -2.0]), "amin", include_self=False
    )
    assert out.tolist() == [-1.0, -2.0]


@pytest.mark.skipif(ROUTE != "main", reason="v0.6 fallback: no compiled ops")
def test_main_route_has_compiled_ops_export_and_fast_evaluator():
    from detectron2 import _C
    from detectron2.evaluation.fast_eval_api import COCOeval_opt  # noqa: F401

    import detectron2.export  # noqa: F401  (needs caffe2 on v0.6)

    assert _C.get_compiler_version()
    for op in ("COCOevalAccumulate", "COCOevalEvaluateImages", "deform_conv_forward"):
        assert callable(getattr(_C, op)), op
    assert callable(torch.ops.detectron2.nms_rotated)  # registered as a torch operator


@pytest.mark.skipif(ROUTE != "fallback", reason="official Detectron2 with compiled ops")
def test_fallback_placeholder_answers_env_queries_and_names_missing_ops():
    from detectron2 import _C
    from detectron2.utils.collect_env import collect_env_info

    assert _C.has_cuda() is False
    assert "not built" in _C.get_compiler_version()
    assert "detectron2" in collect_env_info()  # default_setup calls this
    with pytest.raises(ImportError, match="deform_conv_forward.*compiled"):
        _C.deform_conv_forward
    # the model zoo configs are shipped with the package
    from detectron2 import model_zoo

    assert os.path.isfile(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    assert detectron2.__version__ == "0.6"
    with pytest.raises(ImportError, match="caffe2"):  # README: detectron2.export needs main
        importlib.import_module("detectron2.export")


def _setup(repo_root, tmp_path, **env):
    """Run tools/setup_env.sh with ``env`` alone of the set-up's variables (``make test
    D2_ROUTE=...`` puts its own in the environment); these cases fail before any venv is
    created."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("D2_", "VENV"))}
    proc = subprocess.run(
        ["bash", os.path.join(repo_root, "tools", "setup_env.sh")],
        env={**inherited, "VENV": str(tmp_path / "venv"), **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
    )  # fmt: skip
    assert not (tmp_path / "venv").exists()
    return proc.returncode, proc.stdout


def test_setup_rejects_bad_route_source_and_checksum(repo_root, tmp_path):
    code, out = _setup(repo_root, tmp_path, D2_ROUTE="official")
    assert code != 0 and "D2_ROUTE=official" in out
    code, out = _setup(repo_root, tmp_path, D2_SOURCE=str(tmp_path / "detectron2-x.tar.gz"))
    assert code != 0 and "detectron2-x.tar.gz: no such file" in out
    archive = tmp_path / "detectron2-y.tar.gz"
    archive.write_bytes(b"not the archive")
    code, out = _setup(repo_root, tmp_path, D2_SOURCE=str(archive), D2_SOURCE_SHA256="0" * 64)
    assert code != 0 and "detectron2-y.tar.gz: sha256" in out and "expected " + "0" * 64 in out
    code, out = _setup(repo_root, tmp_path, D2_SOURCE=str(archive), D2_ROUTE="fallback")
    assert code != 0 and "D2_ROUTE=fallback" in out


def test_ci_runs_the_readme_commands_on_both_routes(repo_root):
    with open(os.path.join(repo_root, ".ci", "run")) as f:
        ci = f.read()
    with open(os.path.join(repo_root, "README.md")) as f:
        readme = f.read()
    for command in ("make test D2_ROUTE=fallback", "make test-main D2_SOURCE="):
        assert re.search(r"^step .*" + re.escape(command), ci, flags=re.M), command
        assert command in readme, command
    # each make target sets up its own venv with the route it names
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make")
    dry = subprocess.run(
        [make, "-n", "-C", repo_root, "test", "D2_ROUTE=fallback"], stdout=subprocess.PIPE, text=True
    ).stdout
    assert "VENV=.venv D2_ROUTE=fallback" in dry and ".venv/bin/python -m pytest -q tests" in dry
    dry = subprocess.run(
        [make, "-n", "-C", repo_root, "test-main", "D2_SOURCE=src.tar.gz"],
        stdout=subprocess.PIPE, text=True,
    ).stdout  # fmt: skip
    assert "VENV=.venv-main D2_ROUTE=main" in dry and 'D2_SOURCE="src.tar.gz"' in dry
    assert ".venv-main/bin/python -m pytest -q tests" in dry


def test_ci_fails_loudly_without_the_detectron2_archive(repo_root, tmp_path):
    clone = tmp_path / "clone"
    (clone / ".ci").mkdir(parents=True)
    shutil.copy(os.path.join(repo_root, ".ci", "run"), clone / ".ci" / "run")
    proc = subprocess.run(
        ["bash", str(clone / ".ci" / "run")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "shared/vendor/detectron2-02b5c4e2.tar.gz is missing" in proc.stdout
