"""Start one of Parrot's servers with wattflow's two start-up workarounds (stdlib only).

Run by Parrot's own interpreter as a script (wattflow is not installed there):

    python boot.py parrot.serve.http_server --config_path core.json [--release_mode]
    python boot.py parrot.engine.http_server --config_path engine.json [--release_mode]

Before the module runs as `__main__`:

1. Where torch is not installed, `torch` is a stand-in module. Parrot's utilities import
   torch for names only (dtype constants in `parrot/engine/config.py` and
   `parrot/utils/gpu_mem_track.py`, `torch.manual_seed` in `set_random_seed`), and its
   openai path never computes with it. Every attribute is a class whose attributes are
   again such classes and whose call returns itself, so `torch.float16` works as a dict
   key or type annotation and `torch.cuda.manual_seed(0)` is a no-op. The module has a
   `__spec__` but neither `__version__` nor `__file__`, so `transformers` decides torch is
   absent, as it is. Where torch is installed (a GPU host's image, WATTFLOW_PARROT_PYTHON),
   it is imported as it is: `transformers` would find its metadata and take the stand-in
   for the real thing. Nothing on the openai path initialises CUDA (`torch.device("cuda")`
   and `torch.cuda.manual_seed` are lazy).
2. `parrot.engine.builtin.builtin_engine` is a stub: `parrot/engine/engine_creator.py`
   imports the builtin engine (CUDA kernels, xformers, triton) eagerly even to create an
   openai engine. The stub's `BuiltinEngine` refuses to be built, so asking for the builtin
   engine fails loudly instead of importing it.

Nothing upstream is edited or copied; see docs/parrot.md.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import runpy
import sys
import threading
import time
import types

SERVERS = ("parrot.serve.http_server", "parrot.engine.http_server")
PARENT_ENV = "WATTFLOW_PARENT_PID"  # wattflow.environment.PARENT_PID (no wattflow import here)


class _Anything(type):
    """A class whose attributes are such classes and whose call returns itself."""

    def __getattr__(cls, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _stand_in(f"{cls.__name__}.{name}")

    def __call__(cls, *args: object, **kwargs: object) -> type:
        return cls


_made: dict[str, type] = {}


def _stand_in(name: str) -> type:
    if name not in _made:
        _made[name] = _Anything(name, (), {})
    return _made[name]


def _torch_module() -> types.ModuleType:
    torch = types.ModuleType("torch", "wattflow's stand-in: Parrot's openai path needs no torch")
    torch.__spec__ = importlib.machinery.ModuleSpec("torch", None)

    def attr(name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _stand_in(f"torch.{name}")

    torch.__getattr__ = attr  # PEP 562
    return torch


class BuiltinEngine:
    """Stands in for parrot.engine.builtin.builtin_engine.BuiltinEngine."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(
            "Parrot's builtin engine is not available under wattflow (it needs torch 2.1 "
            "and CUDA kernels); use engine_type openai"
        )


def install() -> None:
    """Put the stand-ins into sys.modules (before anything imports parrot): torch's only
    where no torch is installed."""
    if "torch" not in sys.modules and importlib.util.find_spec("torch") is None:
        sys.modules["torch"] = _torch_module()
    stub = types.ModuleType("parrot.engine.builtin.builtin_engine", "wattflow's stub")
    stub.BuiltinEngine = BuiltinEngine
    sys.modules["parrot.engine.builtin.builtin_engine"] = stub


def exit_with_parent() -> None:
    """Parrot's servers run until killed: end this one when the wattflow process that
    started it (WATTFLOW_PARENT_PID) is gone, so a crashed run leaves nothing behind."""
    parent = int(os.environ.get(PARENT_ENV) or 0)
    if not parent:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="wattflow-parent-watch").start()


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in SERVERS:
        raise SystemExit(f"usage: boot.py {{{'|'.join(SERVERS)}}} ARGS...")
    install()
    exit_with_parent()
    sys.argv = [argv[0], *argv[1:]]
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
