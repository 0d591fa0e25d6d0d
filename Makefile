# Targets named in README.md. The set-up targets are idempotent and quick once done.
#   make test                      .venv: Detectron2 by D2_ROUTE (auto: main from D2_SOURCE or git
#                                  when reachable, else the v0.6 fallback), then the whole suite
#   make test-main D2_SOURCE=SRC   .venv-main: official Detectron2 main built with its compiled
#                                  ops from SRC (source archive or folder; git when unset), suite
PY := .venv/bin/python
PY_MAIN := .venv-main/bin/python
D2_ROUTE ?= auto
D2_SOURCE ?=
D2_SOURCE_SHA256 ?=

.PHONY: setup setup-main test test-main demo bench bench-syncs clean-demo gpu-prepare gpu-check
setup:
	VENV=.venv D2_ROUTE=$(D2_ROUTE) D2_SOURCE="$(D2_SOURCE)" D2_SOURCE_SHA256="$(D2_SOURCE_SHA256)" \
	  bash tools/setup_env.sh

setup-main:
	VENV=.venv-main D2_ROUTE=main D2_SOURCE="$(D2_SOURCE)" D2_SOURCE_SHA256="$(D2_SOURCE_SHA256)" \
	  bash tools/setup_env.sh

test: setup
	$(PY) -m pytest -q tests

test-main: setup-main
	$(PY_MAIN) -m pytest -q tests

# MODEL.DEVICE chosen explicitly: cuda when torch sees a GPU, else cpu (printed before training).
demo: setup
	device=$$($(PY) -m anchor_free_app.device) && \
	$(PY) train_net.py --config-file configs/PseudoIoU/pseudo_iou_R_18_FPN_demo.yaml \
	  MODEL.DEVICE $$device OUTPUT_DIR output/demo_pseudo_iou

bench: setup
	$(PY) benchmarks/benchmark.py --output benchmarks/results

# Host-device synchronisations per training iteration of the four models (about 2 minutes).
bench-syncs: setup
	$(PY) benchmarks/benchmark.py --syncs --threads 1 --output benchmarks/results

clean-demo:
	rm -rf output/demo_*

# The GPU acceptance run (docs/gpu_acceptance.md).
#   make gpu-prepare [D2_SOURCE=ARCHIVE]   here, with PyPI: wheels for CPython 3.12 + Detectron2's
#                                          source into $(GPU_BUNDLE) (git-ignored), size printed
#   make gpu-check [GPU_OUT=DIR]           on the GPU machine (its python3): install, six parts
#                                          (GPU_CHECK_ARGS: more tools/gpu_check.py options)
#   make gpu-check DEVICE=cpu              the same run at tiny sizes on the CPU (.venv)
GPU_BUNDLE ?= gpu_bundle
GPU_OUT ?= output/gpu_check
DEVICE ?= cuda
GPU_CHECK_ARGS ?=
GPU_PY ?= $(if $(filter cpu,$(DEVICE)),$(if $(wildcard $(PY)),$(PY),python3),python3)
gpu-prepare: setup
	$(PY) tools/gpu_prepare.py --bundle $(GPU_BUNDLE) $(if $(D2_SOURCE),--d2-source "$(D2_SOURCE)")

gpu-check:
	$(GPU_PY) tools/gpu_check.py --device $(DEVICE) --bundle $(GPU_BUNDLE) --output $(GPU_OUT) \
	  $(GPU_CHECK_ARGS)
