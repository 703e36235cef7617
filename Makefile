# Every target builds its own virtual environment from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The native accelerator is built by the install: its sources make the venv out of date.
NATIVE := $(wildcard src/pyflank/native/*.c src/pyflank/native/*.h)

.PHONY: run test soak bench bench-reference docs picture lint clean venv linux-assets

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py $(NATIVE)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

BACKEND ?= auto

run: $(STAMP)
	$(BIN)/python -m pyflank.demo --backend $(BACKEND)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

soak: $(STAMP)
	PYFLANK_HYPOTHESIS_PROFILE=soak $(BIN)/python -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# Keep this run's figures as the tracked reference (benchmarks/results/reference.json).
bench-reference: $(STAMP)
	$(BIN)/python -m benchmarks.run --reference

# The API reference (pdoc).  Packages that define __all__ list their own submodules only, so
# every top-level part is named here.
DOCS_OUT     ?= build/docs
DOCS_MODULES := pyflank pyflank.vmm pyflank.exit_handler pyflank.testing pyflank.abi \
                pyflank.abi.generate pyflank.guests pyflank.intel_x64 pyflank.memory \
                pyflank.platform pyflank.backends pyflank.cli pyflank.observe \
                pyflank.observe.format pyflank.observe.plot pyflank.debug pyflank.gdbstub \
                 pyflank.snapshot pyflank.debugger pyflank.native pyflank.introspect

docs: $(STAMP)
	$(BIN)/python -m pdoc --docformat restructuredtext -o $(DOCS_OUT) $(DOCS_MODULES)
	@echo "API reference: $(DOCS_OUT)/index.html"

# The README's picture of a run's exits (pyflank.observe.plot), from examples/observe_run.py.
picture: $(STAMP)
	$(BIN)/python examples/observe_run.py build/observe
	cp build/observe/exits.png docs/exits.png

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks setup.py
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

# Debian's kernels and busybox (apt-get download), the initramfs, cached with versions.
linux-assets: $(STAMP)
	$(BIN)/python -m pyflank.platform.linux.assets --flavour all
