# The README's two commands: `make sweep` (the main job) and `make test` (ruff, import layers, then pytest).
# Each creates .venv with plain pip when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: sweep test browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all]'
	touch $(STAMP)

sweep: $(STAMP)
	$(BIN)/python -m hashtune.sweep --space ablations --resume auto $(ARGS)

# the page's browser test drives Debian's chromium through chromedriver (packages, not pip: installed once)
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || apt-get install -y -q chromium chromium-driver >/dev/null \
		|| echo "make: could not install chromium + chromedriver (apt needs root): the page's browser test will fail"

# the venv (pip keeps one core busy) and chromium (apt: mostly download) are made side by side
test:
	@$(MAKE) --no-print-directory -j2 $(STAMP) browser
	$(BIN)/ruff format --check --quiet .
	$(BIN)/ruff check --quiet .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(ARGS)
