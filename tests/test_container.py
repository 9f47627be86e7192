"""Serving images without a container engine: specs, manifests, the cell's side, the error
path (a runtime that is not there), the server's container command, and `telemetry: none`.
The real podman build and run is tests/test_container_podman.py."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, SNAKEMAKE, TINY_MODEL, copy_pipeline
from wattflow import environment
from wattflow.engines import container
from wattflow.engines import server as srv
from wattflow.engines.backends.vllm import VllmLauncher
from wattflow.engines.base import BATCHING_SCHEMA, batching_default
from wattflow.engines.server import RuntimeUnavailable

NO_DOCKER = "unix:///nonexistent/wattflow-test/docker.sock"
IMAGE = "vllm/vllm-openai:v0.26.0"
ENGINE = {"kind": "vllm", "model": "m", "gpu": "g", "runtime": "docker", "image": IMAGE}
LAUNCHER = VllmLauncher()


def image_spec(name: str, engine: dict) -> dict:
    return container.image_spec(name, engine, "vllm")


def test_image_spec_defaults_and_recipe():
    spec = image_spec("e", ENGINE)
    assert spec == {
        "engine": "e",
        "kind": "vllm",
        "runtime": "docker",
        "probe": "vllm",
        "base": IMAGE,
        "dockerfile": "containers/Dockerfile",
        "args": {},
        "tag": "wattflow/e:latest",
    }
    assert container.recipe_file(spec) == ["containers/Dockerfile"]
    app = image_spec("e", {**ENGINE, "runtime": "apptainer"})
    assert app["dockerfile"] == "containers/wattflow.def"
    native = image_spec("e", {**ENGINE, "runtime": "native"})
    assert native == {
        "engine": "e",
        "kind": "vllm",
        "runtime": "native",
        "probe": "vllm",
        "command": None,
    }
    assert container.recipe_file(native) == []
    for f in ("Dockerfile", "Dockerfile.sim-server", "wattflow.def"):
        assert (ROOT / "containers" / f).is_file()
    assert "FROM ${BASE}" in (ROOT / "containers" / "Dockerfile").read_text()
    assert "ARG BASE=vllm/vllm-openai:v0.26.0" in (ROOT / "containers" / "Dockerfile").read_text()


def test_context_holds_only_package_and_containers():
    import tarfile

    with tarfile.open(fileobj=container.context_tar(ROOT)) as tar:
        names = tar.getnames()
    assert "containers/Dockerfile" in names and "wattflow/testing/standin_server.py" in names
    assert {n.split("/")[0] for n in names} == {"containers", "wattflow"}
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_docker_missing_is_a_clear_error_at_build_time(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", NO_DOCKER)
    spec = image_spec("gpu", ENGINE)
    out = tmp_path / "images" / "gpu.json"
    with pytest.raises(RuntimeUnavailable, match=r"runtime docker selected but no Docker engine"):
        container.build(spec, out, root=ROOT, log=lambda _t: None)
    assert not out.exists()
    # the rule's script: one clear line, a failing status, no manifest
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_image.py"), "--spec", json.dumps(spec)]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "DOCKER_HOST": NO_DOCKER},
    )
    assert run.returncode == 1 and not out.exists()
    assert "wattflow: image for engine 'gpu': engine gpu: runtime docker" in run.stderr


def test_native_manifest(tmp_path, monkeypatch):
    spec = image_spec("n", {**ENGINE, "runtime": "native"})
    monkeypatch.setenv(environment.VLLM_COMMAND, "definitely-not-a-vllm-binary")
    with pytest.raises(RuntimeUnavailable, match="runtime native"):
        container.build(spec, tmp_path / "n.json", program=srv.native_program(spec, LAUNCHER))
    monkeypatch.setenv(
        environment.VLLM_COMMAND, f"{sys.executable} -m wattflow.testing.standin_server"
    )
    m = container.build(spec, tmp_path / "n.json", program=srv.native_program(spec, LAUNCHER))
    assert json.loads((tmp_path / "n.json").read_text()) == m
    assert m["run_image"] is None and m["spec"] == spec
    try:
        from importlib.metadata import version

        assert m["server_version"] == version("vllm")
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - PackageNotFoundError: vLLM is not installed here
        assert m["server_version"] is None and "not installed" in m["server_version_reason"]


def test_apptainer_builds_a_sif_and_records_its_hash(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "apptainer"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        'echo "$@" >> "$(dirname "$0")/calls"\n'
        'if [ "$1" = build ]; then for a; do out=$prev; prev=$a; done; '
        'echo "sif of $prev" > "$out"; exit 0; fi\n'
        'if [ "$1" = exec ]; then echo version=0.26.0; fi\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    spec = image_spec("hpc", {**ENGINE, "runtime": "apptainer"})
    m = container.build(spec, tmp_path / "images" / "hpc.json", root=ROOT, log=lambda _t: None)
    sif = tmp_path / "images" / "hpc.sif"
    assert m["run_image"] == m["sif"] == str(sif) and sif.read_text() == (
        "sif of containers/wattflow.def\n"
    )
    assert m["sif_sha256"] == container.sha256_file(sif) and m["server_version"] == "0.26.0"
    calls = (fake.parent / "calls").read_text()
    assert "--build-arg BASE=vllm/vllm-openai:v0.26.0" in calls


def test_apptainer_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *_a, **_k: None)
    spec = image_spec("hpc", {**ENGINE, "runtime": "apptainer"})
    with pytest.raises(RuntimeUnavailable, match="runtime apptainer"):
        container.build(spec, tmp_path / "hpc.json", root=ROOT)


def test_cell_runs_the_manifest_image(tmp_path, monkeypatch):
    monkeypatch.setenv(environment.IMAGES_DIR, str(tmp_path))
    engine = {**ENGINE, "runtime": "podman", "image": "base:1"}
    with pytest.raises(RuntimeError, match=r"no image manifest at .*e\.json.*`image` rule"):
        container.with_image("e", engine, "vllm")
    manifest = {
        "spec": image_spec("e", engine),
        "image_id": "sha256:abc",
        "run_image": "sha256:abc",
        "tag": "wattflow/e:latest",
        "digest": None,
        "server_version": "0.26.0",
    }
    (tmp_path / "e.json").write_text(json.dumps(manifest))
    run_spec, info = container.with_image("e", engine, "vllm")
    assert run_spec == {**engine, "image": "sha256:abc"} and engine["image"] == "base:1"
    assert info == {
        "image_id": "sha256:abc",
        "run_image": "sha256:abc",
        "tag": "wattflow/e:latest",
        "server_version": "0.26.0",
    }
    with pytest.raises(RuntimeError, match="was built for"):
        container.with_image("e", {**engine, "image": "base:2"}, "vllm")
    native = {**ENGINE, "runtime": "native"}
    assert container.with_image("e", native, "vllm") == (native, None)


class _FakeContainers:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def run(self, image, **kw):  # noqa: ANN001
        self.calls.append((image, kw))
        return type("C", (), {"id": "cid", "logs": lambda *_a, **_k: iter(())})()


def test_container_command_and_gpus(tmp_path, monkeypatch):
    pytest.importorskip("docker")
    client = type("Client", (), {"containers": _FakeContainers()})()
    monkeypatch.setattr(srv, "docker_client", lambda _runtime: client)
    model = {k: v for k, v in TINY_MODEL.items() if k != "dtype"}
    batching = {k: batching_default(k) for k in BATCHING_SCHEMA}  # as config validation fills
    base = {**ENGINE, **batching, "model": model, "runtime": "podman", "image": "sha256:abc"}
    server = {"max_num_seqs": 4, "prefix_caching": True, "scheduling_policy": "fcfs"}
    for spec, entry, gpus in (
        (base, ["vllm"], True),
        (
            {**base, "command": "python3 -m wattflow.testing.standin_server serve"},
            ["python3"],
            True,
        ),
        ({**base, "container_gpus": False}, ["vllm"], False),
    ):
        prepared = {"model_dir": str(tmp_path), "model_name": "wattflow"}
        launch = LAUNCHER.launch_spec(spec, server, prepared, 8000, "k")
        s = srv.Server(
            spec,
            launch,
            native=srv.native_program(spec, LAUNCHER),
            gpus=[1],
            log_path=tmp_path / "l",
            port=8000,
            api_key="k",
            model_name="wattflow",
        )
        s.start()
        image, kw = client.containers.calls[-1]
        assert image == "sha256:abc" and kw["entrypoint"] == entry
        program = srv.serve_command(spec) or ["vllm", "serve"]
        assert kw["command"] == program[1:] + launch.args
        assert ("devices" in kw) == gpus and kw["labels"]["wattflow"] == "1"


def test_native_command_from_engine(monkeypatch):
    monkeypatch.delenv(environment.VLLM_COMMAND, raising=False)
    assert srv.serve_command({}) is None
    assert srv.serve_command({"command": "python3 -m x serve"}) == ["python3", "-m", "x", "serve"]
    ok = {"runtime": "native", "command": f"{sys.executable} -m x serve"}
    srv.check_runtime(ok, srv.native_program(ok, LAUNCHER))
    bad = {"runtime": "native", "command": "no-such-vllm serve"}
    with pytest.raises(RuntimeUnavailable, match="runtime native"):
        srv.check_runtime(bad, srv.native_program(bad, LAUNCHER))


def test_telemetry_none_measures_without_nvml(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    sys.path.insert(0, str(ROOT / "tests"))
    from real_fakes import start_fake_server
    from test_real_measure import KNOBS, _spec, _workflows

    from wattflow import cell, devices
    from wattflow.progress import Progress

    def no_nvml():
        raise AssertionError("NVML must not be touched with telemetry: none")

    monkeypatch.setitem(devices._OVERRIDES, "nvml", no_nvml)
    proc, url = start_fake_server("sk-test")
    try:
        spec = _spec(url)
        spec["engine"]["telemetry"] = "none"
        m = cell.measure(spec, KNOBS, _workflows(), Progress("t", 4, stream=io.StringIO()))
        assert all(r.status == "ok" for r in m.records) and m.telemetry == []
        assert m.extra["telemetry"] == {}
        capped = {**KNOBS, "power_cap_w": 300}
        with pytest.raises(RuntimeError, match="telemetry none, but power caps"):
            cell.measure(spec, capped, _workflows(), Progress("t", 4, stream=io.StringIO()))
    finally:
        proc.terminate()
        proc.wait(10)


# ----------------------------------------------------------------------- the pipeline


def _smk(d: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(d), "DOCKER_HOST": NO_DOCKER}
    return subprocess.run(
        [SNAKEMAKE, *args], cwd=d, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_pipeline_image_job_only_for_vllm_engines(tmp_path):
    copy_pipeline(tmp_path)
    cfg_path = tmp_path / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    # the shipped (simulator) grid: no image job, no runtime needed (DOCKER_HOST is dead)
    out = _smk(tmp_path, "-n", "--quiet", "rules")
    assert out.returncode == 0, out.stderr[-3000:]
    rules = set(out.stdout.split())
    assert "cell" in rules and "image" not in rules
    sim = {**cfg, "grid": {**cfg["grid"], "workload": ["sequential"], "max_num_seqs": [8]}}
    sim["grid"].update(power_cap_w=["default"], max_output_tokens=[64])
    cfg_path.write_text(yaml.safe_dump(sim))
    out = _smk(tmp_path, "--cores", "1", "--until", "cell")  # runs, with no runtime at all
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (tmp_path / "results" / "images").exists()
    shutil.rmtree(tmp_path / "results")

    cfg["engines"]["gpu"] = {**cfg["engines"]["sim"], "kind": "vllm", "runtime": "docker"}
    cfg["grid"].update(
        engine=["gpu"],
        workload=["sequential"],
        max_num_seqs=[8],
        power_cap_w=["default"],
        max_output_tokens=[64],
    )
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = _smk(tmp_path, "-n", "--quiet", "rules", "--until", "cell")
    assert out.returncode == 0, out.stderr[-3000:]
    assert {"image", "cell"} <= set(out.stdout.split())
    out = _smk(tmp_path, "--cores", "1", "--until", "cell")
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "wattflow: image for engine 'gpu': engine gpu: runtime docker selected" in text
    assert not (tmp_path / "results" / "cells").exists()
