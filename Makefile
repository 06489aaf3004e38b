# llmzoo: the README's two commands.
#   make train  - set up .venv, build the default data + tokenizer, train, evaluate, sample
#   make test   - set up .venv with the test extras, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: train test setup setup-test lint clean

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.runtime

setup-test: $(VENV)/.test

train: setup
	$(VENV)/bin/llmzoo train $(ARGS)

test: setup-test
	$(PY) -m pytest -q -n 2 --dist loadscope --durations=15 --nbmake tests colab

lint: setup-test
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check .

clean:
	rm -rf runs data_cache
