# Fresh-machine entry points: `make demo` and `make test` create or reuse .venv and install the
# pinned dependencies first. Extra pip arguments for torch go in TORCH_PIP_ARGS, e.g. on a
# machine without a GPU and without a local CPU wheel:
#   make demo TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIP_ARGS ?=
DEMO_OUT ?= demo_output
# make test's pytest-xdist processes, 1 thread each (auto: one per core); on 2 cores 14.8 min with the real data
# (2026-12-08; make test leaves out the tests marked slow, make test-all runs every test)
TEST_WORKERS ?= auto
REAL ?= ../shared/data/real
REAL_OUT ?= data/real

.PHONY: demo test test-all verify real-data clean

$(STAMP): requirements.txt requirements-monailabel.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $$(grep '^torch==' requirements.txt) $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps $$(grep -e '^monailabel==' -e '^pydicom-seg==' requirements-monailabel.txt)
	$(BIN)/python -m pip install --quiet $$(grep -v -e '^#' -e '^monailabel==' -e '^pydicom-seg==' requirements-monailabel.txt | sed 's/ *#.*//') -c requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py --out $(DEMO_OUT)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not slow" tests

test-all: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests

verify: $(STAMP)
	$(BIN)/python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath configs/schema/meta_schema_20240725.json

real-data: $(STAMP)
	bash scripts/prepare_real.sh $(REAL) $(REAL_OUT)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
