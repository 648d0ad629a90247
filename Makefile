# The two commands of the README. Both create .venv when it is missing and
# are quick when it is already there.
#   make demo   set everything up, run the main job (writes runs/demo/...)
#   make test   set everything up, run the tests
PYTHON ?= python3
VENV ?= .venv
# Pinned so pip takes a local CPU wheel where one lies on disk; elsewhere this
# is the ordinary PyPI torch. Override: make test TORCH_SPEC='torch>=2.4'
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rlab-installed

.PHONY: setup demo test bench mutate clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps "pytorchcv>=0.0.70"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rlab demo

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup   # two workers (2-core CI); Ray tests share one, see tests/conftest.py

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	$(PY) -m pip install --quiet --no-deps "torchattacks>=3.5"
	# ART's AdversarialPatchPyTorch imports torchvision: the release paired with this torch (2.N -> 0.N+15)
	$(PY) -m pip install --quiet --no-deps "torchvision==0.$$($(PY) -c 'import torch; print(int(torch.__version__.split(".")[1]) + 15)').*"

# Mutation testing (mutmut) of the returns math, the updates, the gradient attacks and the
# defenses; not part of `make test` (tens of minutes). MUTATE_ARGS='--groups returns'
mutate: $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,mutate]"
	$(PY) bench/mutate.py $(MUTATE_ARGS)

clean-venv:
	rm -rf $(VENV)
