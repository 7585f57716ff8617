# Two set-up-free commands: `make demo` and `make test`. Everything they need is installed from nothing
# into .venv: torch (the CUDA build the machine's package cache provides), the package in editable mode
# (building the fastmim._C extension), the test tools and the optional DALI backend. `make test` also builds
# the test-only SIMT-emulation library (the CUDA kernels compiled for the CPU with ASan and UBSan), through
# which the tests run every CUDA kernel body. The tests run on every core (pytest-xdist, one worker per core,
# each test file on one worker; tests/conftest.py gives each worker its share of threads and starts the
# longest files first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
SOURCES := pyproject.toml setup.py $(wildcard csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/*/*/*.h)

.PHONY: install emulation test demo clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) $(SOURCES)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q --no-build-isolation -e ".[test,dali]"
	touch $(STAMP)

emulation: $(STAMP)
	$(PY) tests/emulation/build.py

test: $(STAMP) emulation
	$(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder --durations=25

# The demo writes outside the checkout, afresh each time (DEMO_OUT=DIR to choose the folder).
DEMO_OUT ?= $(or $(TMPDIR),/tmp)/fastmim-demo
demo: $(STAMP)
	@echo "make demo: writing into $(DEMO_OUT)"
	$(PY) -m fastmim.pretrain --output $(DEMO_OUT) --resume never --set train.overwrite=true

clean:
	rm -rf build *.egg-info fastmim/*.so runs
