"""Calibration profiles: the simulator's fitted constants for one (model, GPU, engine
version), where they came from, and how well they fit. Bundled profiles live in
`wattflow/engines/sim/profiles/<name>.yaml`; a GPU entry names one (`profile: h100-sxm`) or
gives a path (`profile: path/to/mine.yaml`). The format is described in MODEL.md (§9).

Only `constants` and the DVFS values enter a cell's params (`to_spec`): editing a profile's
provenance or residuals reruns nothing, editing a constant reruns the cells that use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from wattflow.engines.sim.constants import ALPHA, MEMORY_KNEE, SimConstants, names

BUNDLED_DIR = Path(__file__).resolve().parent / "profiles"
DVFS_REQUIRED = ("alpha", "memory_knee")
# For a GPU whose profile has no `dvfs:` of its own: the evidence-only fit of the H100's
# DVFS constants (`python -m wattflow.calibration.dvfs`; a test keeps them equal).
DEFAULT_DVFS = {
    "alpha": {
        "value": ALPHA,
        "low": 1.263,
        "high": 2.178,
        "sources": ["wattflow/calibration/dvfs_sources.yaml, profile h100-sxm (MODEL.md §5)"],
    },
    "memory_knee": {
        "value": MEMORY_KNEE,
        "low": 0.174,
        "high": 0.8,
        "sources": ["wattflow/calibration/dvfs_sources.yaml, profile h100-sxm (MODEL.md §5)"],
    },
}


class ProfileError(ValueError):
    """A missing or malformed profile, naming the file and key."""


@dataclass
class Profile:
    name: str
    gpu: str
    model: str | None
    engine: str | None
    validated: bool
    constants: dict[str, float | bool]
    dvfs: dict[str, dict]
    source: dict = field(default_factory=dict)
    residuals: dict = field(default_factory=dict)
    notes: str = ""

    def dvfs_values(self) -> dict[str, float]:
        """The DVFS constants' values, without their bands and sources."""
        return {k: float(v["value"]) for k, v in self.dvfs.items()}

    def to_spec(self) -> dict:
        """What a cell's params carry: the constants and DVFS values, nothing else."""
        return {"name": self.name, "constants": dict(self.constants), "dvfs": self.dvfs_values()}

    def sim_constants(self, base: SimConstants | None = None) -> SimConstants:
        values = {**self.constants, **self.dvfs_values()}
        return (base or SimConstants()).with_values(**values)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "gpu": self.gpu,
            "model": self.model,
            "engine": self.engine,
            "validated": self.validated,
            "notes": self.notes,
            "constants": self.constants,
            "dvfs": self.dvfs,
            "source": self.source,
            "residuals": self.residuals,
        }


def resolve_path(ref: str, base_dir: str | Path | None = None) -> Path:
    """A bundled profile's name, or a path (relative to `base_dir`, else the cwd)."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        p = Path(ref)
        return p if p.is_absolute() or base_dir is None else Path(base_dir) / p
    return BUNDLED_DIR / f"{ref}.yaml"


def bundled() -> list[str]:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))


def load(ref: str | Path, base_dir: str | Path | None = None) -> Profile:
    path = resolve_path(str(ref), base_dir)
    if not path.is_file():
        raise ProfileError(
            f"profile {str(ref)!r} not found ({path}); bundled profiles: {bundled()}"
        )
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not YAML: {exc}") from None
    return from_dict(doc, str(path))


def from_dict(doc: dict, where: str = "profile") -> Profile:
    if not isinstance(doc, dict):
        raise ProfileError(f"{where}: a profile is a mapping")
    for key in ("name", "gpu", "constants", "dvfs"):
        if key not in doc:
            raise ProfileError(f"{where}: missing key {key!r}")
    constants = doc["constants"] or {}
    known = set(names()) - set(DVFS_REQUIRED)
    for k, v in constants.items():
        if k not in known:
            raise ProfileError(f"{where}: constants.{k}: unknown constant; known: {sorted(known)}")
        if not isinstance(v, int | float | bool):
            raise ProfileError(f"{where}: constants.{k}: {v!r} is not a number")
    dvfs = doc["dvfs"] or {}
    for k in DVFS_REQUIRED:
        if k not in dvfs:
            raise ProfileError(f"{where}: dvfs.{k}: required")
    for k, v in dvfs.items():
        if not isinstance(v, dict) or not {"value", "low", "high", "sources"} <= set(v):
            raise ProfileError(f"{where}: dvfs.{k}: needs value, low, high, sources")
        if not v["low"] <= v["value"] <= v["high"]:
            raise ProfileError(f"{where}: dvfs.{k}: value outside [low, high]")
    return Profile(
        name=str(doc["name"]),
        gpu=str(doc["gpu"]),
        model=doc.get("model"),
        engine=doc.get("engine"),
        validated=bool(doc.get("validated", False)),
        constants=dict(constants),
        dvfs={k: dict(v) for k, v in dvfs.items()},
        source=doc.get("source") or {},
        residuals=doc.get("residuals") or {},
        notes=doc.get("notes") or "",
    )


def save(profile: Profile, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(profile.as_dict(), sort_keys=False, width=100, allow_unicode=True)
    path.write_text(
        "# wattflow simulator calibration profile (format: wattflow/engines/sim/MODEL.md §9)\n"
        + text
    )
    return path
