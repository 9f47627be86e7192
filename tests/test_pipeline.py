"""End to end through Snakemake on the simulator: outputs, and exactly which jobs rerun.

Each test works in a copy of the repository's pipeline files, so editing package code or
the config there cannot touch the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import SNAKEMAKE, copy_pipeline, small_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A copy of the pipeline with a small grid, run once to completion."""
    d = copy_pipeline(tmp_path_factory.mktemp("pipeline"))
    write_config(d, small_config("results"))
    out = smk(d, "--cores", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    (d / "run.out").write_text(out.stdout)
    return d


def write_config(d: Path, cfg: dict) -> None:
    (d / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def smk(d: Path, *args: str, python: Path | None = None) -> subprocess.CompletedProcess:
    """Snakemake in `d`; with `python`, run as `PYTHON -m snakemake` by that interpreter."""
    env = {**os.environ, "PYTHONPATH": str(d)}
    cmd = [str(python), "-m", "snakemake"] if python else [SNAKEMAKE]
    return subprocess.run(
        [*cmd, *args], cwd=d, env=env, capture_output=True, text=True, timeout=600
    )


def planned(d: Path, *args: str, python: Path | None = None) -> dict[str, int]:
    """Jobs per rule that a dry run plans ({} when nothing is to be done)."""
    out = smk(d, "-n", *args, python=python)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    stats = text.split("Job stats:", 1)
    if len(stats) == 1:
        assert "Nothing to be done" in text, text[-2000:]
        return {}
    jobs = {}
    for line in stats[1].splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        if m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
    return jobs


def test_run_produces_cells_summary_figures_and_report(workdir):
    res = workdir / "results"
    cells = sorted(res.glob("cells/**/cell.json"))
    assert len(cells) == 4
    for c in cells:
        for f in ("requests.parquet", "workflows.parquet", "telemetry.parquet"):
            assert (c.parent / f).stat().st_size > 0
    summary = pl.read_parquet(res / "summary.parquet")
    assert summary.height == 4 and summary["valid"].all()
    assert (summary["j_per_workflow"] > 0).all()
    stages = pl.read_parquet(res / "stages.parquet")  # the summary rule's second output
    assert stages["cell_dir"].n_unique() == 4 and (stages["energy_j"] > 0).all()
    figs = {p.suffix for p in (res / "figures").iterdir() if not p.name.startswith(".")}
    assert figs == {".png", ".svg", ".html"}
    assert "<img" in (res / "report.html").read_text()


def test_grid_prints_one_progress_line_per_cell(workdir):
    lines = [x for x in (workdir / "run.out").read_text().splitlines() if "[wattflow] cells" in x]
    assert len(lines) == 4
    assert sorted(x.split("cells ")[1].split(" ")[0] for x in lines) == ["1/4", "2/4", "3/4", "4/4"]
    assert all("elapsed, ETA" in x and "engine=sim/workload=" in x for x in lines)


def test_slo_edit_reruns_only_the_analysis(workdir):
    cfg = small_config("results")
    cfg["slo"] = {"ttft_s": 2.0, "makespan_s": 60}
    write_config(workdir, cfg)
    try:
        assert planned(workdir) == {"summary": 1, "figures": 1, "report": 1, "all": 1}
        out = smk(workdir, "--cores", "2", "--quiet", "all")
        assert out.returncode == 0, out.stderr[-3000:]
        summary = pl.read_parquet(workdir / "results" / "summary.parquet")
        assert (summary["slo_ttft_s"] == 2.0).all() and summary[
            "good_workflows"
        ].is_not_null().all()
        assert "good workflows/min" in (workdir / "results" / "report.html").read_text()
    finally:
        write_config(workdir, small_config("results"))
        assert smk(workdir, "--cores", "2", "--quiet", "all").returncode == 0


TINY_STUDY = '''"""A study of one claim, dropped into the pipeline's copy of the package."""
import polars as pl

from wattflow.analysis.findings import Finding, Study, engines_of


def all_valid(summary: pl.DataFrame) -> Finding:
    bad = summary.filter(~pl.col("valid")).height
    evidence = f"{summary.height - bad} of {summary.height} cells valid"
    return Finding("(t) Every cell is valid.", bad == 0, evidence, engines=engines_of(summary))


STUDY = Study(name="tiny", title="a tiny study", claims=(all_valid,))
'''


def test_a_study_is_one_module_selected_in_config(workdir):
    """wattflow/studies/tiny.py and `analysis.studies: [tiny]`: the report checks its claim
    instead of the seed study's, and only figures and report rerun."""
    tiny = workdir / "wattflow" / "studies" / "tiny.py"
    tiny.write_text(TINY_STUDY)
    cfg = small_config("results")
    cfg["analysis"] = {"studies": ["tiny"]}
    write_config(workdir, cfg)
    try:
        assert planned(workdir) == {"figures": 1, "report": 1, "all": 1}
        out = smk(workdir, "--cores", "2", "--quiet", "all")
        assert out.returncode == 0, out.stderr[-3000:]
        text = (workdir / "results" / "report.html").read_text()
        assert "Findings of a tiny study" in text and "4 of 4 cells valid" in text
        assert "Findings of the seed study" not in text
    finally:
        tiny.unlink()
        write_config(workdir, small_config("results"))
        assert smk(workdir, "--cores", "2", "--quiet", "all").returncode == 0
    assert "Findings of the seed study" in (workdir / "results" / "report.html").read_text()


def test_analysis_edit_reruns_figures_and_report_only(workdir):
    """Objectives and the simulator accuracy table reach the report through the rule."""
    (workdir / "accuracy.csv").write_text("metric,mape_pct\nj_per_workflow,4.5\n")
    cfg = small_config("results")
    cfg["analysis"] = {"objectives": ["makespan_p90_s<=600"], "accuracy": "accuracy.csv"}
    write_config(workdir, cfg)
    try:
        assert planned(workdir) == {"figures": 1, "report": 1, "all": 1}
        out = smk(workdir, "--cores", "2", "--quiet", "all")
        assert out.returncode == 0, out.stderr[-3000:]
        text = (workdir / "results" / "report.html").read_text()
        assert "MAPE vs real GPU: j_per_workflow 4.5 %" in text
        assert "makespan_p90_s&lt;=600" in text
        # editing the table reruns the report alone
        (workdir / "accuracy.csv").write_text("metric,mape_pct\nj_per_workflow,5.5\n")
        assert planned(workdir) == {"report": 1, "all": 1}
    finally:
        write_config(workdir, small_config("results"))
        assert smk(workdir, "--cores", "2", "--quiet", "all").returncode == 0


def test_nothing_to_do_when_complete(workdir):
    assert planned(workdir) == {}


def test_package_code_edit_reruns_nothing(workdir):
    code = workdir / "wattflow" / "client" / "executor.py"
    code.write_text(code.read_text() + "\n# an edit to library code\n")
    assert planned(workdir) == {}


def test_a_new_knob_renames_and_reruns_no_finished_cell(tmp_path_factory):
    """A grid finished before a knob existed: declaring it (one entry in wattflow/knobs.py,
    at the default every finished cell implicitly had) plans no job; adding another value
    plans exactly the new cells."""
    d = copy_pipeline(tmp_path_factory.mktemp("knob"))
    knobs_py = d / "wattflow" / "knobs.py"
    before_knob = knobs_py.read_text()
    end = "\n)\nKNOB_NAMES = "
    assert end in before_knob, "the KNOBS tuple's end moved; update this test"
    decl = (
        '\n    Knob("probe_knob", "client", "int", "declared after the grid ran", default=1,'
        " minimum=1),"
    )
    write_config(d, small_config("results"))
    out = smk(d, "--cores", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    before = sorted(p.parent.name for p in (d / "results").glob("cells/**/cell.json"))
    knobs_py.write_text(before_knob.replace(end, decl + end))  # declared, default only
    assert planned(d) == {}
    cfg = small_config("results")
    cfg["grid"]["probe_knob"] = [1, 2]
    write_config(d, cfg)
    jobs = planned(d)
    assert jobs == {"cell": 4, "summary": 1, "figures": 1, "report": 1, "all": 1}
    out = smk(d, "-n", "--printshellcmds")
    runs = [ln for ln in out.stdout.splitlines() if "scripts/run_cell.py --cell" in ln]
    assert len(runs) == 4 and all("probe_knob=2" in ln for ln in runs)
    assert len(before) == 4 and not any("probe_knob" in b for b in before)


def test_new_knob_value_runs_only_new_cells(workdir):
    cfg = small_config("results")
    cfg["grid"]["max_num_seqs"].append(256)
    write_config(workdir, cfg)
    try:
        assert planned(workdir) == {"cell": 2, "summary": 1, "figures": 1, "report": 1, "all": 1}
    finally:
        write_config(workdir, small_config("results"))


def test_workload_edit_reruns_only_that_workload(workdir):
    cfg = small_config("results")
    cfg["workloads"]["agentic"]["review_tokens"] = 123
    write_config(workdir, cfg)
    try:
        jobs = planned(workdir)
        assert jobs.get("cell") == 2  # the two agentic cells, not the sequential ones
        out = smk(workdir, "-n", "--quiet", "rules", "--printshellcmds")
        assert "workload=sequential" not in out.stdout
    finally:
        write_config(workdir, small_config("results"))


def test_unrelated_config_edit_reruns_no_cell(workdir):
    cfg = small_config("results")
    cfg["workloads"]["interactive"]["system_tokens"] = 1234  # not in the grid
    write_config(workdir, cfg)
    try:
        assert "cell" not in planned(workdir)
    finally:
        write_config(workdir, small_config("results"))


def test_model_version_bump_reruns_every_cell(workdir):
    init = workdir / "wattflow" / "__init__.py"
    text = init.read_text()
    init.write_text(re.sub(r'MODEL_VERSION = "(\d+)"', 'MODEL_VERSION = "999"', text))
    try:
        assert planned(workdir).get("cell") == 4
    finally:
        init.write_text(text)


def test_invalid_config_stops_before_any_cell(workdir):
    cfg = small_config("results")
    cfg["grid"]["power_cap_w"] = [900]
    write_config(workdir, cfg)
    try:
        out = smk(workdir, "-n")
        assert out.returncode != 0
        assert "grid.power_cap_w[0]" in out.stderr + out.stdout
    finally:
        write_config(workdir, small_config("results"))


def moved_interpreter(where: Path) -> Path:
    """This Python as if its venv had moved to `where`: `where/bin/python`, a link to the
    running interpreter, with the venv's pyvenv.cfg and site-packages beside it, so
    `sys.executable` (what the rules run jobs with) is a path no finished cell has seen."""
    (where / "bin").mkdir(parents=True)
    python = where / "bin" / "python"
    python.symlink_to(sys.executable)
    if sys.prefix != sys.base_prefix:  # a venv: it is found from pyvenv.cfg beside bin/
        shutil.copy(Path(sys.prefix) / "pyvenv.cfg", where / "pyvenv.cfg")
        for name in ("lib", "lib64"):
            if (Path(sys.prefix) / name).is_dir():
                (where / name).symlink_to(Path(sys.prefix) / name)
    out = subprocess.run(
        [python, "-c", "import sys, snakemake, wattflow; print(sys.executable)"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(python) != sys.executable
    return python


def test_another_interpreter_path_reruns_no_cell(workdir, tmp_path):
    """Issue 8.10: the finished grid, planned by the same Python from another path (a moved
    venv), has nothing to do: jobs find their interpreter through $WATTFLOW_PYTHON, which is
    in no job's params."""
    python = moved_interpreter(tmp_path / "elsewhere")
    assert planned(workdir, python=python) == {}
    out = smk(workdir, "-n", "--printshellcmds", "--forcerun", "cell", python=python)
    assert out.stdout.count('"$WATTFLOW_PYTHON" scripts/run_cell.py') == 4  # the variable,
    assert str(python) not in out.stdout and sys.executable not in out.stdout  # not a path


def test_interpreter_as_a_param_would_rerun_every_cell(tmp_path):
    """The control for the test above: with the interpreter a param of the cell rule (as it
    was: `params: python=sys.executable`), the same move plans every cell again."""
    d = copy_pipeline(tmp_path / "pipeline")
    rules = d / "rules" / "cells.smk"
    text = rules.read_text()
    assert text.count("    params:\n") == 1, "the cell rule's params moved; update this test"
    rules.write_text(text.replace("    params:\n", "    params:\n        python=sys.executable,\n"))
    write_config(d, small_config("results"))
    out = smk(d, "--cores", "2", "--until", "cell")
    assert out.returncode == 0, out.stderr[-3000:]
    assert planned(d, "--until", "cell") == {}
    python = moved_interpreter(tmp_path / "elsewhere")
    assert planned(d, "--until", "cell", python=python) == {"cell": 4}


def _dry_run_cells(d: Path, *args: str) -> list[str]:
    """The cell directories a dry run plans (from the cell jobs' shell commands)."""
    out = smk(d, "-n", "--printshellcmds", *args)
    assert out.returncode == 0, out.stderr[-3000:]
    return sorted(re.findall(r"scripts/run_cell\.py --cell '?([^' ]+)'?", out.stdout))


def test_wattflow_and_snakemake_read_the_same_config_file(tmp_path):
    """Issue 8.8: `wattflow --config F` and `snakemake --configfile F` see the same grid: F
    replaces config/config.yaml, it is not merged over it. F's grid leaves out axes that
    config/config.yaml spreads (power caps, output lengths), so a merge would plan more
    cells; the control below checks that it would."""
    d = copy_pipeline(tmp_path / "pipeline")
    cfg = small_config("elsewhere")
    for axis in ("power_cap_w", "max_output_tokens", "mode", "sm_clock_mhz"):
        cfg["grid"].pop(axis, None)  # at their defaults: one value each
    f = tmp_path / "F.yaml"
    f.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(d)}
    out = subprocess.run(
        [sys.executable, "-m", "wattflow", "--config", str(f), "cells"],
        cwd=d, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    listed = sorted(out.stdout.split())
    assert len(listed) == 4 and all(p.startswith("elsewhere/cells/engine=sim/") for p in listed)
    jobs = planned(d, "--configfile", str(f), "--quiet", "rules")
    assert jobs["cell"] == len(listed)
    assert [f"elsewhere/cells/{c}" for c in _dry_run_cells(d, "--configfile", str(f))] == listed
    # control: a Snakefile that merged F over config/config.yaml would plan another grid
    snakefile = d / "Snakefile"
    guarded = "if not workflow.overwrite_configfiles:\n\n    configfile:"
    assert guarded in snakefile.read_text(), "the Snakefile's config rule moved; update this test"
    snakefile.write_text(snakefile.read_text().replace(guarded, "configfile:"))
    assert planned(d, "--configfile", str(f), "--quiet", "rules")["cell"] > len(listed)
