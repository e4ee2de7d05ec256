# The README's two commands: `make sweep` (the main job) and `make test` (ruff, import layers, then pytest).
# Each creates .venv when it is missing or older than pyproject.toml: a plain venv, into which uv (a pip-compatible
# installer that downloads, unpacks and byte-compiles in parallel) installs the project. The same packages and versions as
# `pip install -e '.[all]'`, in 68 s instead of 126 s on a fresh 2-core machine here (2026-12-03). uv does not read
# pip's configuration: a constraint file pip is configured with (this machine caps torch so) is handed to it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `=`, not `:=`: pip's configuration is read (0.3 s) only when the venv is made, not at every `make`
PIP_CONSTRAINT = $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^[:a-z]*[.]constraint='\(.*\)'$$/\1/p" | head -1)

.PHONY: sweep test browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode \
		$(if $(PIP_CONSTRAINT),--constraint $(PIP_CONSTRAINT)) -e '.[all]'
	touch $(STAMP)

sweep: $(STAMP)
	$(BIN)/python -m hashtune.sweep --space ablations --resume auto $(ARGS)

# the page's browser test drives Debian's chromium through chromedriver (packages, not pip: installed once)
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || apt-get install -y -q chromium chromium-driver >/dev/null \
		|| echo "make: could not install chromium + chromedriver (apt needs root): the page's browser test will fail"

# the venv (uv) and chromium (apt: mostly download) are made side by side
test:
	@$(MAKE) --no-print-directory -j2 $(STAMP) browser
	$(BIN)/ruff format --check --quiet .
	$(BIN)/ruff check --quiet .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(ARGS)
