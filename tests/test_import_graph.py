"""The package's import graph (issue 10.6): no cycle among module-level imports, no cycle
merely dodged by a function-local import, and the config layer loads nothing of the analysis
layer (an objective's metric is checked against wattflow.columns, not the analysis code)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PKG = ROOT / "wattflow"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _targets(node: ast.AST, module: str, is_pkg: bool, mods: dict[str, Path]) -> list[str]:
    """The wattflow modules an import statement names (`from a import b`: a.b if a module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = module.split(".") if is_pkg else module.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    else:
        return []
    return [n for n in names if n in mods]


def graph() -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    """Module-level edges (TYPE_CHECKING blocks left out) and function-local imports."""
    mods = _modules()
    top: dict[str, set[str]] = {}
    local = []
    for m, path in mods.items():
        tree = ast.parse(path.read_text())
        is_pkg = path.name == "__init__.py"
        top[m] = {t for n in tree.body for t in _targets(n, m, is_pkg, mods)}
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for n in ast.walk(fn):
                    local += [(m, t, n.lineno) for t in _targets(n, m, is_pkg, mods)]
    return top, local


def reaches(top: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        x = todo.pop()
        if x == goal:
            return True
        if x not in seen:
            seen.add(x)
            todo += top.get(x, ())
    return False


def test_graph_sees_known_edges() -> None:
    top, local = graph()
    assert "wattflow.columns" in top["wattflow.config"]
    assert "wattflow.knobs" in top["wattflow.columns"]
    assert any(m == "wattflow.client.policies.parrot" for m, _, _ in local)


def test_no_module_level_cycle() -> None:
    top, _ = graph()
    cycles = [(a, b) for a in top for b in top[a] if reaches(top, b, a)]
    assert not cycles, cycles


def test_no_cycle_dodged_by_a_local_import() -> None:
    """A function-local import is for start-up cost only: hoisting it closes no cycle."""
    top, local = graph()
    dodged = [(m, t, line) for m, t, line in local if reaches(top, t, m)]
    assert not dodged, dodged


def test_config_loads_no_analysis_code() -> None:
    code = (
        "import sys, yaml; from wattflow import config\n"
        "cfg = yaml.safe_load(open('config/config.yaml'))\n"
        "cfg.setdefault('analysis', {})['objectives'] = ['makespan_p90_s<=30']\n"
        "config.validate(cfg)\n"
        "print(sorted(m for m in sys.modules if m.startswith('wattflow.analysis')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# The layers, in the order data flows through them (the README's layer table is generated
# from this one). A module imports only its own layer and those before it.
LAYERS = (
    ("declarations", "what knobs, columns, tables, GPUs and models are; env-var names",
     ("knobs", "columns", "objectives", "outputs", "files", "yamltext", "hardware",
      "plugins", "provenance", "environment")),
    ("workloads", "workflows of LLM calls: the patterns, YAML specs, traces",
     ("workloads",)),
    ("devices", "GPU device libraries (NVML) and their settings", ("devices",)),
    ("telemetry", "power and energy sources over the devices (NVML, RAPL)", ("telemetry",)),
    ("engines", "serving engines: the simulator (with its own telemetry), vLLM, any "
     "OpenAI endpoint, the server pool, container images; a stand-in OpenAI server for "
     "tests", ("engines", "testing")),
    ("client", "release policies (client modes) driving an engine; Parrot as one",
     ("client",)),
    ("config", "the configuration: validation, the cell grid, config slices", ("config",)),
    ("cell", "one cell: run, attribute, check and write it; progress; a run's hold on its "
     "results folder and its cells' processes; cell jobs and cluster groups",
     ("cell", "cell_job", "forkserver", "attribution", "energy_check", "progress",
      "snakemake_signals", "snakemake_groups", "orphan", "results_lock")),
    ("analysis", "summary, figures, report, advisor, studies, calibration, CLI",
     ("analysis", "studies", "calibration", "cli", "__main__")),
)  # fmt: skip


def layer(module: str) -> int:
    head = module.removeprefix("wattflow").removeprefix(".").split(".")[0]
    if not head:
        return 0  # the package itself: MODEL_VERSION
    for rank, (_, _, heads) in enumerate(LAYERS):
        if head in heads:
            return rank
    raise AssertionError(f"{module}: in no layer of LAYERS (add it)")


def test_imports_follow_the_layers() -> None:
    """No module imports one of a later layer, at module level or inside a function."""
    top, local = graph()
    upward = {(a, b) for a in top for b in top[a] if layer(b) > layer(a)}
    upward |= {(a, b) for a, b, _ in local if layer(b) > layer(a)}
    assert not upward, sorted(upward)


def test_declarations_import_nothing_above_them() -> None:
    top, local = graph()
    decl = [m for m in top if layer(m) == 0]
    assert "wattflow.knobs" in decl
    above = {(a, b) for a in decl for b in top[a] if layer(b) > 0}
    above |= {(a, b) for a, b, _ in local if a in decl and layer(b) > 0}
    assert not above, sorted(above)


def layer_table() -> str:
    """The README's table of layers (a test keeps it there)."""
    rows = ["| layer | what | packages and modules |", "|---|---|---|"]
    for name, what, heads in LAYERS:
        mods = ", ".join(f"`{h}`" for h in heads)
        rows.append(f"| {name} | {what} | {mods} |")
    return "\n".join(rows) + "\n"


def test_every_module_has_a_layer() -> None:
    top, _ = graph()
    for m in top:
        layer(m)
