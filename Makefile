# Two set-up-free commands: `make demo` and `make test`. Everything they need is installed from nothing
# into .venv: torch (the CUDA build the machine's package cache provides), the package in editable mode
# (building the fastmim._C extension), the test tools and the optional DALI backend.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
SOURCES := pyproject.toml setup.py $(wildcard csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/*/*/*.h)

.PHONY: install test demo clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) $(SOURCES)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q --no-build-isolation -e ".[test,dali]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m fastmim.pretrain --output runs/demo

clean:
	rm -rf build *.egg-info fastmim/*.so runs
