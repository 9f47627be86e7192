# Quick start: `make run` (the default grid on the simulator) and `make test`.
# Both create .venv and install the project on first use; only Python 3.11+ and pip needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.wattflow-installed
CORES  ?= all

.PHONY: run test lint fmt bench dry-run report clean distclean

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv unavailable (Debian without python3-venv); using virtualenv"; \
	  $(PYTHON) -m pip install --user -q virtualenv && $(PYTHON) -m virtualenv -q $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

# The grid prints one [wattflow] line per finished cell (done/total, elapsed, ETA);
# Snakemake's per-job lines are quieted, its scheduler's two per round filtered out.
run: $(STAMP)
	@bash -o pipefail -c '$(BIN)/snakemake --cores $(CORES) --quiet rules progress host 2>&1 \
	  | grep --line-buffered -v -E "^(Select jobs to execute|Execute [0-9]+ jobs)\.\.\.$$"'
	$(BIN)/snakemake --cores 1 --quiet rules progress host --report results/snakemake-report.html
	@$(BIN)/python -m wattflow.progress results
	@echo "[wattflow] Snakemake's report: results/snakemake-report.html"

dry-run: $(STAMP)
	$(BIN)/snakemake -n --quiet rules

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/snakemake --lint

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/snakefmt Snakefile rules/

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf results/cells results/summary.parquet results/figures results/*.html results/logs .snakemake

distclean: clean
	rm -rf $(VENV)
