# Two entry points: `make demo` (the main job on the embedded world) and `make test` (the whole suite).
# Both create .venv if missing; torch 2.13.0 goes in first so that no multi-GB CUDA build is pulled.
VENV := .venv
PY := $(VENV)/bin/python
CORE := $(VENV)/.installed-core
TESTS := $(VENV)/.installed-test

.PHONY: demo test bench clean

$(CORE): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $(CORE)

# The test extras (pytest, TRL, lm-eval: the suite checks against them) are not needed by the demo.
$(TESTS): $(CORE)
	$(PY) -m pip install -q -e '.[test]'
	touch $(TESTS)

demo: $(CORE)
	$(VENV)/bin/elasticity demo

test: $(TESTS)
	$(PY) -m pytest -q

bench: $(CORE)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/train_vs_trl.py
	$(PY) benchmarks/compress_vs_lm_eval.py

clean:
	rm -rf $(VENV) runs
