#!/usr/bin/env bash
# One set-up step for this project (README.md, "Set-up"): creates a venv and installs torch,
# Detectron2, the other dependencies and this project. Idempotent: quick when already done.
#   bash tools/setup_env.sh                                      (make setup: .venv, route auto)
#   VENV=.venv-main D2_ROUTE=main D2_SOURCE=detectron2-<sha>.tar.gz bash tools/setup_env.sh
#                                                                (make setup-main D2_SOURCE=...)
# Environment:
#   PYTHON          interpreter for the venv (default python3)
#   VENV            the venv to create or complete (default .venv); routes can live side by side
#   D2_ROUTE        auto (default) | main | fallback: which Detectron2 to install
#                     auto:     an existing one, else main from D2_SOURCE, else main from git when
#                               reachable, else the v0.6 fallback
#                     main:     official Detectron2 with its compiled ops, from D2_SOURCE if set,
#                               else from D2_GIT_URL (an error if neither can be had)
#                     fallback: pb1-detectron2==0.6 (v0.6 Python code, no compiled ops)
#   D2_SOURCE       official Detectron2 source: a GitHub source archive (.tar.gz / .zip) or a
#                   folder (a clone); built with its compiled ops
#   D2_SOURCE_SHA256  if set, the archive's sha256 must match
#   D2_GIT_URL      official Detectron2 repository (default GitHub's)
#   D2_GIT_TIMEOUT  seconds to wait for D2_GIT_URL to answer (default 15)
#   MAX_JOBS        parallel compiler jobs for the compiled ops (default: number of CPUs)
set -euo pipefail
D2_SOURCE=${D2_SOURCE:-}
if [ -n "$D2_SOURCE" ] && [ -e "$D2_SOURCE" ]; then  # relative to the caller's directory
  D2_SOURCE=$(cd "$(dirname "$D2_SOURCE")" && pwd)/$(basename "$D2_SOURCE")
fi
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
STAMP="$VENV/.setup-done"
D2_ROUTE=${D2_ROUTE:-auto}
D2_SOURCE_SHA256=${D2_SOURCE_SHA256:-}
D2_GIT_URL=${D2_GIT_URL:-https://github.com/facebookresearch/detectron2.git}
D2_GIT_TIMEOUT=${D2_GIT_TIMEOUT:-15}
PB1_VERSION=0.6
PB1_SHA256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29
# Every pip call: tools/constraints.txt (torch, torchvision, setuptools: no dependency can pull
# another torch). The v0.6 fallback adds tools/constraints-v0.6.txt (numpy, Pillow).
CONSTRAINTS=(-c "$ROOT/tools/constraints.txt")
CONSTRAINTS_V06=(-c "$ROOT/tools/constraints-v0.6.txt")
# Official Detectron2's runtime requirements (its setup.py install_requires, same specifiers).
D2_MAIN_REQUIREMENTS=("Pillow>=7.1" matplotlib "pycocotools>=2.0.2" "termcolor>=1.1"
  "yacs>=0.1.8" tabulate cloudpickle "tqdm>4.29.0" tensorboard "fvcore>=0.1.5,<0.1.6"
  "iopath>=0.1.7,<0.1.10" "omegaconf>=2.1,<2.4" "hydra-core>=1.1" black packaging)
# What this project and its tests need on every route.
PROJECT_REQUIREMENTS=(fvcore pycocotools opencv-python-headless tensorboard matplotlib pytest onnx==1.23.2 onnxruntime==1.32.0)

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

case "$D2_ROUTE" in auto|main|fallback) ;; *) die "D2_ROUTE=$D2_ROUTE: expected auto, main or fallback" ;; esac
if [ -n "$D2_SOURCE" ]; then
  [ -e "$D2_SOURCE" ] || die "D2_SOURCE=$D2_SOURCE: no such file or folder"
  [ "$D2_ROUTE" != fallback ] || die "D2_SOURCE is set but D2_ROUTE=fallback: choose one"
  if [ -n "$D2_SOURCE_SHA256" ] && [ -f "$D2_SOURCE" ]; then
    got=$(sha256sum "$D2_SOURCE" | cut -d' ' -f1)
    [ "$got" = "$D2_SOURCE_SHA256" ] || die "D2_SOURCE=$D2_SOURCE: sha256 $got, expected $D2_SOURCE_SHA256"
  fi
fi

if [ -f "$STAMP" ] && [ "$STAMP" -nt tools/setup_env.sh ] && [ "$STAMP" -nt pyproject.toml ] \
   && [ "$STAMP" -nt tools/constraints.txt ] && [ "$STAMP" -nt tools/constraints-v0.6.txt ] \
   && "$PY" -c "import torch, detectron2, pseudo_iou, autoassign" 2>/dev/null; then
  done_kind=$(sed -n 's/^kind=//p' "$STAMP")
  if [ "$D2_ROUTE" != auto ] && [ "$done_kind" != "$D2_ROUTE" ]; then
    die "$VENV was set up with Detectron2 of the ${done_kind:-unknown} route but D2_ROUTE=$D2_ROUTE: use another VENV or delete $VENV"
  fi
  log "already set up in $VENV ($(head -n1 "$STAMP")); delete $STAMP to redo"
  exit 0
fi

[ -x "$PY" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "${CONSTRAINTS[@]}" "$@"; }

if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  log "installing torch==2.14.1 torchvision==0.29.1"
  pip_install "torch==2.14.1" "torchvision==0.29.1"
fi
pip_install "setuptools<81" wheel

# Kind of an installed Detectron2: "fallback" (our placeholder detectron2/_C.py) or "main".
installed_kind() {
  "$PY" - <<'EOF' 2>/dev/null
import detectron2
try:
    from detectron2 import _C
except ImportError:
    print("main")  # official code without its extension: no v0.6 pins either
else:
    print("fallback" if getattr(_C, "FALLBACK_BUILD", False) else "main")
EOF
}

# Official Detectron2 with its compiled ops, from a local source or git URL ($1, for pip).
build_official() {
  local src=$1
  pip_install ninja "${D2_MAIN_REQUIREMENTS[@]}"
  local jobs=${MAX_JOBS:-$(nproc)}
  if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    log "building Detectron2's compiled ops with CUDA (MAX_JOBS=$jobs) from $src"
    MAX_JOBS=$jobs pip_install --no-build-isolation --no-deps "$src"
  else
    log "building Detectron2's compiled ops for the CPU (no CUDA device; MAX_JOBS=$jobs) from $src; ~10 min on 2 cores"
    env -u CUDA_HOME FORCE_CUDA=0 MAX_JOBS="$jobs" \
      "$PY" -m pip install --disable-pip-version-check -q "${CONSTRAINTS[@]}" \
      --no-build-isolation --no-deps "$src"
  fi
  "$PY" -c "from detectron2 import _C; _C.get_compiler_version()" \
    || die "Detectron2 was installed from $src but its compiled ops do not import"
}

build_fallback() {
  pip_install "${CONSTRAINTS_V06[@]}" "numpy<1.24" "Pillow<10"
  local build
  build=$(mktemp -d)
  "$PY" tools/fetch_sdist.py pb1-detectron2 "$PB1_VERSION" "$PB1_SHA256" "$build/pb1.tar.gz"
  tar -xzf "$build/pb1.tar.gz" -C "$build"
  local src="$build/pb1-detectron2-$PB1_VERSION"
  "$PY" tools/patch_pb1_setup.py "$src/setup.py"
  cp tools/detectron2_fallback/_C.py "$src/detectron2/_C.py"
  pip_install "${CONSTRAINTS_V06[@]}" --no-build-isolation "$src"
  rm -rf "$build"
}

git_reachable() { timeout "$D2_GIT_TIMEOUT" git ls-remote --exit-code "$D2_GIT_URL" HEAD >/dev/null 2>&1; }

kind=""
route=""
if "$PY" -c "import detectron2" 2>/dev/null; then
  kind=$(installed_kind)
  case "$D2_ROUTE:$kind" in
    main:fallback|fallback:main)
      die "$VENV already has Detectron2 of the $kind route but D2_ROUTE=$D2_ROUTE: use another VENV or delete $VENV" ;;
  esac
  [ -z "$D2_SOURCE" ] || log "D2_SOURCE ignored: $VENV already has Detectron2 ($kind route)"
  route="existing ($kind route, detectron2 $("$PY" -c 'import detectron2; print(detectron2.__version__)'))"
elif [ -n "$D2_SOURCE" ]; then
  build_official "$D2_SOURCE"
  kind=main
  route="official Detectron2 from $(basename "$D2_SOURCE") (compiled ops)"
elif [ "$D2_ROUTE" != fallback ] && git_reachable; then
  log "official Detectron2 is reachable: building it from $D2_GIT_URL (compiled ops)"
  build_official "git+$D2_GIT_URL"
  kind=main
  route="official Detectron2 from git (main, compiled ops)"
elif [ "$D2_ROUTE" = main ]; then
  die "D2_ROUTE=main: D2_SOURCE is not set and $D2_GIT_URL did not answer within ${D2_GIT_TIMEOUT}s; set D2_SOURCE to a Detectron2 source archive or folder"
else
  log "official Detectron2 not requested or not reachable: pb1-detectron2==$PB1_VERSION (v0.6) without compiled ops"
  build_fallback
  kind=fallback
  route="pb1-detectron2==$PB1_VERSION (Detectron2 v0.6 Python code, no compiled ops)"
fi
log "Detectron2 route: $route"

if [ "$kind" = fallback ]; then
  pip_install "${CONSTRAINTS_V06[@]}" "${PROJECT_REQUIREMENTS[@]}"
else
  pip_install "${PROJECT_REQUIREMENTS[@]}"
fi
pip_install --no-build-isolation --no-deps -e .
"$PY" -c "import torch, numpy, detectron2, pseudo_iou, autoassign; print('[setup] torch', torch.__version__, '| numpy', numpy.__version__, '| detectron2', detectron2.__version__)"
printf '%s\nkind=%s\n' "$route" "$kind" > "$STAMP"
log "done: $VENV"
