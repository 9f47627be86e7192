# Helpers shared by the rules: config validation, the cell list, per-rule config slices.
import json
import os
import sys

from wattflow import config as wf_config
from wattflow import container as wf_container
from wattflow import progress as wf_progress
from wattflow.knobs import KNOB_NAMES

try:
    wf_config.validate(config)
except wf_config.ConfigError as err:
    sys.exit(f"wattflow: invalid configuration: {err}")

RESULTS = config["results"]
PYTHON = sys.executable
CELLS = wf_config.cells(config)
CELL_DIR = wf_config.cell_dir_pattern(RESULTS)


def cell_dirs():
    return [f"{RESULTS}/cells/{c.path}" for c in CELLS]


def cell_knobs(wildcards):
    """The cell's knobs, typed, from its path wildcards."""
    return wf_config.knobs_from_wildcards(wildcards)


def cell_spec(wildcards):
    """Only the config slice this cell depends on: editing another workload or engine
    leaves this job's params, and so the job, untouched."""
    return json.dumps(
        wf_config.cell_spec(config, cell_knobs(wildcards)), sort_keys=True
    )


def analysis_params():
    return {
        "grid": config["grid"],
        "config_hash": wf_config.config_hash(config),
        "analysis": config.get("analysis") or {},
    }


def accuracy_table(wildcards):
    """The simulator accuracy table the report shows (config analysis.accuracy), if any."""
    return (config.get("analysis") or {}).get("accuracy") or []


def is_real(engine):
    return config["engines"][engine]["kind"] != "sim"


REAL_ENGINES = sorted({c.knobs["engine"] for c in CELLS if is_real(c.knobs["engine"])})
SERVER_RANK = wf_config.server_ranks(config, CELLS)


def cell_priority(wildcards):
    """Cells sharing a server run back to back (wattflow.config.server_ranks)."""
    group = wf_config.server_group(config, cell_knobs(wildcards))
    return 0 if group is None else SERVER_RANK[group]


def cell_gpus(wildcards):
    return 1 if is_real(wildcards.engine) else 0


# Serving images of vllm engines (rules/container.smk): cells find the manifests here.
IMAGES = f"{RESULTS}/images"
os.environ[wf_container.IMAGES_ENV] = IMAGES


def image_spec(engine):
    return wf_container.image_spec(engine, config["engines"][engine])


def image_manifest(wildcards):
    """A cell's image manifest: vllm engines only ([] for the simulator and openai)."""
    if config["engines"][wildcards.engine]["kind"] != "vllm":
        return []
    return f"{IMAGES}/{wildcards.engine}.json"
