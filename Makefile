# `make run`: set up .venv with what serving needs (requirements.txt), then start the app. `make test`: set up the
# development tools too (requirements-dev.txt, escnn, the paper's checkpoint, Chromium), then run the whole suite;
# `make test-fast`: the suite without the tests marked slow, for every change.
# Nothing needs installing by hand: Python packages come from PyPI, Chromium (browser tests) from Debian.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
SERVING := $(VENV)/.installed-serving
DEVELOPMENT := $(VENV)/.installed-development
EQUIADAPT_WHEEL := .cache/equiadapt-0.1.2-py3-none-any.whl
EQUIADAPT_SHA256 := bd0fae2d8e755721995bc89cf7cbec72a4f20f981c45ddcb1137dc6a61a56d12
CHROMIUM := /usr/bin/chromium

.PHONY: setup setup-dev run test test-fast paper-weights clean

setup: $(SERVING)

setup-dev: $(DEVELOPMENT) $(EQUIADAPT_WHEEL) $(CHROMIUM)

$(SERVING): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	touch $@

$(DEVELOPMENT): requirements-dev.txt $(SERVING)
	$(PIP) -r requirements-dev.txt
	# escnn declares py3nj, which only builds with a Fortran compiler and is not needed for C_n groups.
	$(PIP) --no-deps escnn==1.0.11
	touch $@

# The paper's canonicalizer checkpoint ships inside the equiadapt 0.1.2 wheel (MIT); `python -m canon convert`
# reads it from there. Downloaded only, never installed (it would bring its own torch and stray packages).
$(EQUIADAPT_WHEEL): | $(SERVING)
	mkdir -p .cache
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps equiadapt==0.1.2 -d .cache
	echo "$(EQUIADAPT_SHA256)  $@" | sha256sum --check --quiet

# The browser tests drive Debian's Chromium through Playwright, never a browser Playwright downloads.
$(CHROMIUM):
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

paper-weights: setup-dev
	$(PY) -m canon convert --source $(EQUIADAPT_WHEEL)

run: setup
	$(PY) app.py

test: setup-dev
	$(PY) -m pytest

test-fast: setup-dev
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) .cache
