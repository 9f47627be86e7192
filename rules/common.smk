# Helpers shared by the rules: config validation, the cell list, per-rule config slices.
import json
import sys

from wattflow import config as wf_config
from wattflow.knobs import KNOB_NAMES

try:
    wf_config.validate(config)
except wf_config.ConfigError as err:
    sys.exit(f"wattflow: invalid configuration: {err}")

RESULTS = config["results"]
PYTHON = sys.executable
CELLS = wf_config.cells(config)
CELL_DIR = f"{RESULTS}/cells/" + "/".join(f"{k}={{{k}}}" for k in KNOB_NAMES)


def cell_dirs():
    return [f"{RESULTS}/cells/{c.path}" for c in CELLS]


def cell_knobs(wildcards):
    """The cell's knobs, typed, from its path wildcards."""
    return wf_config.parse_path("/".join(f"{k}={wildcards[k]}" for k in KNOB_NAMES))


def cell_spec(wildcards):
    """Only the config slice this cell depends on: editing another workload or engine
    leaves this job's params, and so the job, untouched."""
    return json.dumps(wf_config.cell_spec(config, cell_knobs(wildcards)), sort_keys=True)


def analysis_params():
    return {"grid": config["grid"], "config_hash": wf_config.config_hash(config)}
