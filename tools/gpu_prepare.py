#!/usr/bin/env python
"""
``make gpu-prepare``: gather what the GPU acceptance run (``tools/gpu_check.py``,
docs/gpu_acceptance.md) needs and the GPU machine lacks, into one git-ignored folder that travels
with the working tree, for a machine with CPython 3.12 (x86-64 manylinux), its own torch /
torchvision / numpy / OpenCV / matplotlib / onnx / onnxruntime, and no package index:

- ``wheels/``: Detectron2's and the project's other runtime requirements as wheels for CPython
  3.12 manylinux x86-64 (``pip download --only-binary=:all: --python-version 3.12 ...``; the
  two that PyPI has as source only, fvcore and antlr4-python3-runtime, are pure Python and built
  here with ``pip wheel``), plus ``setuptools<81`` (Detectron2's ``model_zoo`` imports
  ``pkg_resources``, which setuptools 81 removed) and the v0.6 fallback ``pb1-detectron2`` built
  as a wheel the way ``tools/setup_env.sh`` installs it (``tools/patch_pb1_setup.py``, the
  placeholder ``tools/detectron2_fallback/_C.py``), with v0.6's two uses of names that Pillow 10
  and numpy 1.24 removed replaced by their equal values (``Image.LINEAR`` is ``Image.BILINEAR``;
  ``np.bool`` is ``bool``): the GPU machine has both newer, and v0.6 reads ``Image.LINEAR`` at
  import time;
- the official Detectron2 main source archive (``--d2-source``, default ``$D2_SOURCE`` or the
  vendored archive in ``shared/vendor/`` beside the checkout, as ``.ci/run`` uses);
- ``manifest.json``: every file with its sha256 and size, what each wheel requires and that each
  requirement is either in the bundle or in the GPU machine's image (:data:`GPU_IMAGE_PROVIDES`).

Prints the folder's size and the size of the working tree that travels with it (limit 64 MiB in
all). Needs the package index and the ``.venv`` interpreter (torch: pb1's setup.py imports it).

    make gpu-prepare                       # = .venv/bin/python tools/gpu_prepare.py
    python tools/gpu_prepare.py --bundle gpu_bundle --d2-source detectron2-02b5c4e2.tar.gz
"""
import argparse
import email.parser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from patch_pb1_setup import main as patch_pb1_setup  # noqa: E402

# Official Detectron2 main, the commit CI builds (.ci/run); sha256 of its `git archive`.
D2_ARCHIVE = "detectron2-02b5c4e2.tar.gz"
D2_ARCHIVE_SHA256 = "a42c29a2376e7bcc0b704a173612dd6f75960d837ccf4d340a0d714ac92e36f0"
# What the GPU machine lacks, pinned to the versions the tests run with on this machine. Wheels
# for CPython 3.12 manylinux x86-64 (pure-Python ones are py3-none-any).
WHEELS = {
    "fvcore": "0.1.5.post20221221",
    "iopath": "0.1.9",  # Detectron2 main: >=0.1.7,<0.1.10
    "yacs": "0.1.8",
    "pycocotools": "2.0.11",  # compiled: cp312 manylinux
    "omegaconf": "2.3.1",
    "hydra-core": "1.3.8",
    "antlr4-python3-runtime": "4.9.3",  # omegaconf / hydra-core: ==4.9.*
    "termcolor": "3.3.0",
    "setuptools": "80.10.2",  # <81: pkg_resources (tools/constraints.txt)
}
SOURCE_ONLY = {"fvcore", "antlr4-python3-runtime"}  # PyPI has no wheel: built here (pure Python)
PB1_VERSION = "0.6"  # tools/setup_env.sh
PB1_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# Distributions the GPU machine's image provides (Python 3.12 with torch 2.11,
# torchvision 0.26, numpy 2, OpenCV, matplotlib, tensorboard, onnx, onnxruntime, and the usual
# scientific stack): a wheel's requirement on one of these needs no wheel in the bundle.
GPU_IMAGE_PROVIDES = {
    "torch", "torchvision", "numpy", "opencv-python-headless", "matplotlib", "tensorboard",
    "onnx", "onnxruntime", "pillow", "pyyaml", "tqdm", "tabulate", "portalocker", "cloudpickle",
    "packaging", "typing-extensions", "filelock", "fsspec", "protobuf", "pytest", "wheel",
    "ninja", "psutil", "scipy", "requests",
}  # fmt: skip
# Requirements declared but not imported by the code the acceptance run uses (checked by grep of
# both Detectron2 sources): black (only LazyConfig.save imports it, in a try; yacs configs never
# call it), and v0.6's pydot and future (imported nowhere).
NOT_NEEDED = {"black", "pydot", "future"}
# The GPU machine's platform for `pip download` (pip matches each manylinux tag exactly).
PLATFORM_ARGS = [
    "--only-binary=:all:", "--implementation", "cp", "--abi", "abi3", "--abi", "none",
    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
    "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
    "--platform", "manylinux1_x86_64", "--platform", "any",
]  # fmt: skip
# Detectron2 v0.6 names that Pillow 10 / numpy 1.24 removed -> the values they had.
V06_COMPAT = [
    (re.compile(r"\bImage\.LINEAR\b"), "Image.BILINEAR"),
    (re.compile(r"\bnp\.bool\b(?!_)"), "bool"),
]


def log(msg: str) -> None:
    print(f"[gpu-prepare] {msg}", flush=True)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    log(" ".join(cmd[2:]))
    subprocess.run(cmd, check=True)


def fetch_wheels(wheels_dir: str, python_version: str) -> None:
    """The pinned requirements as wheels for the GPU machine (no dependencies: they are pinned
    above, and the closure is checked in :func:`check_requirements`)."""
    binary = [f"{n}=={v}" for n, v in WHEELS.items() if n not in SOURCE_ONLY]
    source = [f"{n}=={v}" for n, v in WHEELS.items() if n in SOURCE_ONLY]
    abi = "cp" + python_version.replace(".", "")
    pip("download", "--no-deps", *PLATFORM_ARGS, "--python-version", python_version, "--abi", abi,
        "-d", wheels_dir, *binary)
    pip("wheel", "--no-deps", "-w", wheels_dir, *source)


def build_pb1_wheel(wheels_dir: str) -> None:
    """pb1-detectron2 0.6 as tools/setup_env.sh's fallback installs it, as a wheel, with the
    :data:`V06_COMPAT` replacements."""
    with tempfile.TemporaryDirectory() as build:
        sdist = os.path.join(build, "pb1.tar.gz")
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "fetch_sdist.py"),
                        "pb1-detectron2", PB1_VERSION, PB1_SHA256, sdist], check=True)
        shutil.unpack_archive(sdist, build)
        src = os.path.join(build, f"pb1-detectron2-{PB1_VERSION}")
        patch_pb1_setup(os.path.join(src, "setup.py"))
        shutil.copy(os.path.join(ROOT, "tools", "detectron2_fallback", "_C.py"),
                    os.path.join(src, "detectron2", "_C.py"))
        changed = 0
        for folder, _, files in os.walk(os.path.join(src, "detectron2")):
            for name in files:
                if name.endswith(".py"):
                    changed += apply_v06_compat(os.path.join(folder, name))
        log(f"pb1-detectron2: {changed} lines changed for Pillow >= 10 / numpy >= 1.24")
        pip("wheel", "--no-deps", "--no-build-isolation", "-w", wheels_dir, src)


def apply_v06_compat(path: str) -> int:
    with open(path) as f:
        lines = f.readlines()
    changed = 0
    for i, line in enumerate(lines):
        new = line
        for pattern, value in V06_COMPAT:
            new = pattern.sub(value, new)
        if new != line:
            lines[i], changed = new, changed + 1
    if changed:
        with open(path, "w") as f:
            f.writelines(lines)
    return changed


def wheel_requirements(path: str) -> List[str]:
    """The requirements of a wheel that apply on CPython 3.12 Linux without extras."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(path) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(z.read(meta_name).decode())
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython",
           "extra": ""}
    needed = []
    for text in meta.get_all("Requires-Dist") or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            needed.append(normalize(req.name))
    return needed


def wheel_name(filename: str) -> str:
    return normalize(filename.split("-")[0])


def check_requirements(wheels_dir: str) -> Dict[str, List[str]]:
    """{wheel: its requirements}; raises if one is neither bundled nor on the GPU machine."""
    files = sorted(f for f in os.listdir(wheels_dir) if f.endswith(".whl"))
    bundled = {wheel_name(f) for f in files}
    if len(bundled) != len(files):
        raise SystemExit(f"two versions of one package in {wheels_dir}: {files}")
    requires, missing = {}, []
    for f in files:
        requires[f] = wheel_requirements(os.path.join(wheels_dir, f))
        missing += [f"{f} needs {r}" for r in requires[f]
                    if r not in bundled and r not in GPU_IMAGE_PROVIDES and r not in NOT_NEEDED]
    if missing:
        raise SystemExit("requirements neither bundled nor on the GPU machine:\n  "
                         + "\n  ".join(missing))
    return requires


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def travelling_tree_bytes() -> Optional[int]:
    """Bytes of the files that travel with the working tree (tracked, and untracked ones git
    does not ignore); None without git."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "-c", "-o", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    paths = [os.path.join(ROOT, p) for p in out.decode().split("\0") if p]
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p))


def default_d2_source() -> str:
    return os.environ.get("D2_SOURCE") or os.path.join(
        os.path.dirname(ROOT), "shared", "vendor", D2_ARCHIVE)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=os.path.join(ROOT, "gpu_bundle"),
                        help="output folder (replaced; git-ignored)")
    parser.add_argument("--d2-source", default=None,
                        help=f"Detectron2 main source archive (default $D2_SOURCE or {D2_ARCHIVE} "
                             "in shared/vendor beside the checkout)")
    parser.add_argument("--python-version", default="3.12",
                        help="CPython version of the GPU machine (3.12; another one to try the "
                             "bundle on this machine)")
    parser.add_argument("--limit-mib", type=float, default=64.0,
                        help="size limit of the working tree plus the bundle")
    args = parser.parse_args(argv)
    d2_source = args.d2_source or default_d2_source()
    if not os.path.isfile(d2_source):
        raise SystemExit(f"--d2-source {d2_source}: no such file (pass the Detectron2 main source "
                         f"archive, {D2_ARCHIVE}, with D2_SOURCE=PATH)")
    got = sha256(d2_source)
    if os.path.basename(d2_source) == D2_ARCHIVE and got != D2_ARCHIVE_SHA256:
        raise SystemExit(f"{d2_source}: sha256 {got}, expected {D2_ARCHIVE_SHA256}")

    bundle = os.path.abspath(args.bundle)
    staging = bundle + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    wheels_dir = os.path.join(staging, "wheels")
    os.makedirs(wheels_dir)
    fetch_wheels(wheels_dir, args.python_version)
    build_pb1_wheel(wheels_dir)
    requires = check_requirements(wheels_dir)
    shutil.copy(d2_source, os.path.join(staging, os.path.basename(d2_source)))

    files = {}
    for folder, _, names in os.walk(staging):
        for name in sorted(names):
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, staging)
            files[rel] = {"sha256": sha256(path), "bytes": os.path.getsize(path)}
    manifest = {
        "made_by": "tools/gpu_prepare.py",
        "python": f"cp{args.python_version.replace('.', '')}, manylinux x86-64",
        "d2_source": os.path.basename(d2_source),
        "d2_source_sha256": got,
        "wheels": {f: {"requires": r} for f, r in requires.items()},
        "gpu_image_provides": sorted(GPU_IMAGE_PROVIDES),
        "files": files,
    }
    with open(os.path.join(staging, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    shutil.rmtree(bundle, ignore_errors=True)
    os.rename(staging, bundle)

    mib = 1 << 20
    size = folder_bytes(bundle)
    tree = travelling_tree_bytes()
    for rel, entry in files.items():
        log(f"  {entry['bytes'] / mib:7.2f} MiB  {rel}")
    log(f"{bundle}: {len(files)} files, {size / mib:.2f} MiB")
    if tree is not None:
        total = (size + tree) / mib
        log(f"working tree that travels: {tree / mib:.2f} MiB; with the bundle {total:.2f} MiB "
            f"(limit {args.limit_mib:g} MiB)")
        if total > args.limit_mib:
            log("ERROR: over the limit")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
