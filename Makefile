# Everything a fresh clone needs: `make test` and `make reproduce` create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SCALE ?= quick

.PHONY: install test test-quick test-paper reproduce smoke lab bench clean-outputs

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (log: $(VENV)/install.log)"
	@$(PY) -m pip install -e . > $(VENV)/install.log 2>&1 || (tail -50 $(VENV)/install.log; exit 1)
	@# torchattacks' metadata pins requests~=2.25.1 (holding JupyterLab back to 3.x); its code needs only
	@# torch, numpy, scipy and tqdm, which the line above installed. Its wheel also ships a top-level
	@# `robustbench` folder that this repository does not use.
	@$(PY) -m pip install --no-deps torchattacks==3.5.1 >> $(VENV)/install.log 2>&1 || (tail -50 $(VENV)/install.log; exit 1)
	@$(PY) -c "import torch, torchvision, torchattacks, papermill, nbval, lib; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| torchattacks', torchattacks.__version__)"
	@touch $(STAMP)

install: $(STAMP)

test: install  ## unit tests + every notebook under nbval at smoke scale
	$(PY) -m pytest

test-quick: install  ## the quick-scale trend checks (minutes)
	PURIFY_QUICK_TESTS=1 $(PY) -m pytest -m quick tests

test-paper: install  ## every notebook at paper scale under the dry-run cap, on test-written CIFAR/SVHN/ImageNet-folder files and stand-in weights (two hours or more on 2 cores)
	PURIFY_DRY_RUN_TESTS=1 $(PY) -m pytest tests/test_paper_dry_run.py

reproduce: install  ## every notebook at quick scale (SCALE=paper on a GPU)
	$(PY) -m lib.run.reproduce --scale $(SCALE)

smoke: install
	$(PY) -m lib.run.reproduce --scale smoke

lab: install  ## JupyterLab on the notebooks, with this environment as the kernel
	$(PY) -m ipykernel install --sys-prefix --name purification-lab --display-name "purification-lab (.venv)" > /dev/null
	$(VENV)/bin/jupyter lab notebooks/

bench: install  ## speed figures as JSON under benchmarks/results/
	$(PY) -m benchmarks.bench_harness
	$(PY) -m benchmarks.bench_transforms

clean-outputs:
	rm -rf figures/smoke papermill_runs/smoke
