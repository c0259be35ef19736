# Two commands do all set-up on a fresh machine:
#   make demo   builds .venv, renders a small dataset, writes preview.png
#   make test   builds .venv (with TensorFlow), runs ruff, mypy and the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench docs clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(VENV)/.full: $(VENV)/.base
	$(BIN)/python -m pip install -q -e '.[dev,train-cpu]'
	touch $@

demo: $(VENV)/.base
	$(BIN)/shapesgen render --preset paper --instances 6 --layers 3 --num 500 --seed 0 --workers 2 --out data/demo.h5 --force
	$(BIN)/shapesgen info data/demo.h5
	$(BIN)/shapesgen validate data/demo.h5
	$(BIN)/shapesgen preview data/demo.h5 --out preview.png --count 4 --force

test: $(VENV)/.full
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(VENV)/.base
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(VENV)/.full
	$(BIN)/python benchmarks/bench_render.py

docs: $(VENV)/.base
	$(BIN)/python -c "from shapesgen.storage.layout import format_markdown as f; print(f(), end='')" > docs/format.md
	$(BIN)/python -m shapesgen_cli.reference > docs/cli.md

clean:
	rm -rf $(VENV) data preview.png
