# Two entry points: `make demo` (the main job on the embedded world) and `make test` (the whole suite).
# Both create .venv if missing; torch 2.13.0 goes in first so that no multi-GB CUDA build is pulled.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/elasticity demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/train_vs_trl.py
	$(PY) benchmarks/compress_vs_lm_eval.py

clean:
	rm -rf $(VENV) runs
