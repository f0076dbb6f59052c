# Two entry points for a fresh Debian machine with Python 3.11:
#   make run   - set up .venv, run the pipeline on the bundled sample movie
#   make test  - set up .venv (and, as root, the X/Qt system packages), run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAMPLE := sample_data/sample.ome.tif
OUT ?= out

.PHONY: run test setup system-deps lint sample clean bench-detect bench-motion bench-stages bench-batch

$(BIN)/spt: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[all]"
	# an editable install leaves spt uncompiled; where PYTHONDONTWRITEBYTECODE is set, every
	# run (and each helper process) would compile its 15 000 lines again (~0.1 s each)
	$(BIN)/python -m compileall -q spt
	touch $(BIN)/spt

setup: $(BIN)/spt

run: setup
	$(BIN)/spt run $(SAMPLE) --masks sample_data/sample_masks.tif --out $(OUT)
	@echo "Results:               $(OUT)/sample/"
	@echo "Per-stage velocities:  $(OUT)/sample/stage_velocities.csv"

# Headless napari needs a real X server and the Qt xcb libraries.
system-deps:
	@if command -v xvfb-run >/dev/null 2>&1 && ldconfig -p | grep -q libxcb-cursor; then \
	  echo "system packages present"; \
	elif [ "$$(id -u)" = "0" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 \
	    libxcb-render-util0 libxkbcommon-x11-0 libxcb-randr0 libxcb-shape0 libxcb-xfixes0 \
	    libxcb-cursor0 libgl1-mesa-dri libegl1 libdbus-1-3 libfontconfig1 >/dev/null; \
	else \
	  echo "not root: install xvfb and the Qt xcb libraries (see README) to run the napari tests"; \
	fi

test: setup system-deps
	$(BIN)/ruff check spt tests $(wildcard benchmarks)
	xvfb-run -a -s "-screen 0 1280x1024x24" $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check spt tests $(wildcard benchmarks)

# Regenerate the bundled sample movie (fixed seed).
sample: setup
	$(BIN)/spt simulate --out sample_data --name sample --preset sample --seed 2007

clean:
	rm -rf $(OUT) .pytest_cache

# Benchmarks: run by hand, outside CI (minutes each); results go to docs/benchmarks.md.
bench-detect: setup
	$(BIN)/python benchmarks/detect_link.py

# andi-datasets pins numpy<=1.26.4, so the AnDi half runs in its own environment.
bench-motion: setup
	test -x .venv-andi/bin/python || $(PYTHON) -m venv .venv-andi
	.venv-andi/bin/pip install --quiet "numpy<=1.26.4" scipy pandas numba andi-datasets
	PYTHONPATH=. .venv-andi/bin/python benchmarks/motion.py andi
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/motion.py sim

bench-stages: setup
	$(BIN)/python benchmarks/stages.py

bench-batch: setup
	$(BIN)/python benchmarks/batch.py
