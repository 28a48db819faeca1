# Two entry points: `make demo` (the main job on the embedded world) and `make test` (the whole suite).
# Both create .venv if missing; torch 2.13.0 goes in first so that no multi-GB CUDA build is pulled.
VENV := .venv
PY := $(VENV)/bin/python
CORE := $(VENV)/.installed-core
TESTS := $(VENV)/.installed-test

.PHONY: demo test bench clean

# pip byte-compiles on one core; compileall with every core is ~15 s faster here. A file it cannot compile
# (some packages ship Python-2 examples) is skipped, as pip skips it.
COMPILE := $(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true

$(CORE): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-compile torch==2.13.0
	$(PY) -m pip install -q --no-compile -e .
	$(COMPILE)
	touch $(CORE)

# The test extras (pytest, TRL, lm-eval: the suite checks against them) are not needed by the demo.
$(TESTS): $(CORE)
	$(PY) -m pip install -q --no-compile -e '.[test]'
	$(COMPILE)
	touch $(TESTS)

demo: $(CORE)
	$(VENV)/bin/elasticity demo

test: $(TESTS)
	$(PY) -m pytest -q

bench: $(CORE)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/train_vs_trl.py --trl-padding-free
	$(PY) benchmarks/compress_vs_lm_eval.py

clean:
	rm -rf $(VENV) runs
