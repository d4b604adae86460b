# One-command set-up and entry points. Each target creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Test-only extra for cross-checks against PyTorch (CPU build).
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo ablation test venv clean

$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q "$(TORCH_SPEC)" || echo "warning: $(TORCH_SPEC) not installed; torch cross-checks will be skipped"
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.installed

## demo: train a small teacher then student on the bundled photos; per-photo PSNR table
## on held-out photos (a face, a texture, a drawing, scenes). Rerun to resume.
demo: venv
	$(PY) scripts/demo.py

## ablation: the demo plus a student trained without KD (same teacher, equal steps);
## table bicubic / teacher / no-KD / KD under several kernels, IDR figure idr_pca.png.
ablation: venv
	$(PY) scripts/demo.py --ablation

## test: the full test suite (what CI runs).
test: venv
	$(PY) -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) .pytest_cache
