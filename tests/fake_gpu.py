"""A stand-in GPU for cells that run in other processes (Snakemake jobs, SLURM jobs): the
device library `fakegpu` (real_fakes.FakeNvml: one GPU at a steady 250 W), found by every
process through an entry point, as an installed plugin would be. Not a test module.

`install(site)` puts this module, real_fakes and the entry point in `site` (a folder on
the processes' PYTHONPATH, such as a test's pipeline copy); an engine then measures with
`telemetry: [fakegpu]`, and its cells are valid without a GPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from real_fakes import FakeNvml

from wattflow.devices.nvml import NvmlLibrary

NAME = "fakegpu"


class FakeGpuLibrary(NvmlLibrary):
    name = NAME

    def __init__(self) -> None:
        super().__init__(FakeNvml(1, instant=False))  # power = the counter's rate


def install(site: Path) -> None:
    here = Path(__file__).parent
    for module in ("fake_gpu.py", "real_fakes.py"):
        shutil.copy(here / module, site / module)
    info = site / "wattflow_fake_gpu-0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wattflow-fake-gpu\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        f"[wattflow.devices]\n{NAME} = fake_gpu:FakeGpuLibrary\n"
    )
