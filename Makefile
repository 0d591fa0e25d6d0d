# Targets named in README.md. `make setup` is idempotent and quick once done.
PY := .venv/bin/python

.PHONY: setup test demo bench bench-syncs clean-demo
setup:
	bash tools/setup_env.sh

test: setup
	$(PY) -m pytest -q tests

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
