"""A warm Python that forks one process per cell job, so that a job pays a bare interpreter
start (~30 ms) instead of importing polars, numpy and the engines (~0.4 s, more than a
simulator cell's own work). Snakemake still runs, schedules and counts every cell as its
own job; this only makes the job's command cheap.

One server per Snakemake process that owns the grid's servers (WATTFLOW_OWNER_PID, in
registry WATTFLOW_STATE_DIR; rules/servers.smk sets both): the local run, or one cluster
job (a group job's cells, rules/common.smk). The first cell job starts it; it exits when
its owner is gone or when asked (`stop`, the Snakefile's onsuccess/onerror). Its address is
an abstract Unix socket named after the owner and the registry, so nothing is left on disk.

A job (`run_cell`) sends its arguments, environment, working directory and its three
standard streams (the descriptors themselves: the cell writes its log and progress line
where Snakemake pointed the job); the server forks, and the child measures the cell
exactly as `python scripts/run_cell.py` would (wattflow.cell_job.main) and sends its exit
status. A signal to the job (Ctrl-C, Snakemake's kill) is passed on to the child, and a
child whose job has vanished terminates itself; either way the cell unwinds as a
separate process would (no files, servers released). Where no server can be reached the
job measures the cell in its own process, as before.

Two things differ from a fresh process. The cells of a run use the package as the server
imported it when the run's first cell started (an edit made during a run reaches the next
run's cells). And the fork happens after polars' import has started threads of its own
(jemalloc's, an out-of-core cleaner) but before any polars work: a child could only hang
on a lock held at the fork, and 1,500 forks each doing polars work (group_by, Parquet),
two at a time, all ended.

This module imports only the standard library at the top: it runs in every cell job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from wattflow import environment  # the standard library only, as this module

START_TIMEOUT_S = 60.0  # a cold server imports the package: seconds on a loaded machine
POLL_S = 0.2  # how often an idle server checks that its owner is alive
STOP_WAIT_S = 30.0  # how long `stop` waits for running cells to unwind
LOG_NAME = "forkserver.out"  # not *.log: those are the servers' logs
_FDS = (0, 1, 2)
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_HEADER = 8  # a request: its length (8 bytes, big-endian) with the descriptors, then JSON


def address(state_dir: str | os.PathLike[str], owner_pid: int) -> str:
    """The server's abstract socket name for this owner and registry."""
    key = f"{Path(state_dir).resolve()}\0{owner_pid}"
    return "\0wattflow-cells-" + hashlib.sha256(key.encode()).hexdigest()[:24]


def _owner() -> tuple[str, int] | None:
    """(registry, owner pid) of the Snakemake run this job belongs to; None outside one."""
    owner = os.environ.get(environment.OWNER_PID, "")
    if not owner.isdigit():
        return None
    return os.environ.get(environment.STATE_DIR) or str(environment.state_dir()), int(owner)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the job's side ---------------------------------------------------------------------------


def run_cell(argv: list[str]) -> int:
    """Run one cell job: in a fork of the warm server where one can be had, else here."""
    where = _owner()
    if where is not None:
        code = _remote(argv, *where)
        if code is not None:
            return code
    from wattflow.cell_job import main  # the cold path: this process imports everything

    return main(argv)


def _connect(addr: str) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(addr)
    except OSError:
        s.close()
        return None
    return s


def _connect_or_start(state_dir: str, owner: int) -> socket.socket | None:
    addr = address(state_dir, owner)
    s = _connect(addr)
    if s is not None:
        return s
    try:
        proc = _start(state_dir, owner)
    except OSError:
        return None  # no registry folder, no interpreter: the job runs the cell itself
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        s = _connect(addr)
        if s is not None:
            return s
        if proc.poll() not in (None, 0):
            return None  # it could not start (its log says why); 0: another won the address
        time.sleep(0.02)
    return None


def _start(state_dir: str, owner: int) -> subprocess.Popen:
    """A server in its own session (a job's signals are the job's, not the server's)."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    with open(Path(state_dir) / LOG_NAME, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "wattflow.forkserver", "serve", state_dir, str(owner)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _remote(argv: list[str], state_dir: str, owner: int) -> int | None:
    """The cell's exit status from a fork of the server; None where none could be reached
    (the cell has not started, so the caller runs it)."""
    s = _connect_or_start(state_dir, owner)
    if s is None:
        return None
    with s:
        request = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}
        try:
            _send(s, request, list(_FDS))
            f = s.makefile("rb")
            first = f.readline().split()
        except OSError:
            return None
        if first[:1] != [b"pid"]:
            return None  # refused (a server stopping): not started
        child = int(first[1])

        def forward(signum: int, frame: object) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

        before = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
        try:
            return _status(f, child)
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)


def _status(f: Any, child: int) -> int:
    """The child's exit status, once its process has ended (its end closes the stream)."""
    while True:
        try:
            line = f.readline()
        except OSError:
            line = b""
        if not line:
            print(f"wattflow: the cell's process {child} ended without a status", file=sys.stderr)
            return 1
        word, _, value = line.decode().partition(" ")
        if word == "exit":
            f.read()
            return int(value)


def stop(state_dir: str | os.PathLike[str], owner_pid: int) -> bool:
    """Ask the server of this owner and registry to exit once its running cells have ended
    (the Snakefile's onsuccess/onerror); False where none was running."""
    s = _connect(address(state_dir, owner_pid))
    if s is None:
        return False
    with s:
        s.settimeout(STOP_WAIT_S + 5)
        with contextlib.suppress(OSError):
            _send(s, {"stop": True}, [])
            s.recv(64)  # the server closes once it is done
    return True


# -- the server's side ------------------------------------------------------------------------


def serve(state_dir: str, owner: int) -> int:
    """Accept cell jobs until the owner is gone or a `stop` arrives. Returns the exit status
    of the process: the server's (0), or in a forked child the cell's."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address(state_dir, owner))
    except OSError:
        return 0  # another job started the server first
    listener.listen(64)
    listener.settimeout(POLL_S)
    from wattflow import cell_job

    cell_job.preload()
    import gc

    gc.freeze()  # the imported modules stay shared with the children, page for page
    print(f"[forkserver] pid {os.getpid()} serving owner {owner}", flush=True)
    children: set[int] = set()
    while _alive(owner):
        _reap(children)
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        try:
            msg, fds = _receive(conn)
        except (OSError, ValueError):
            conn.close()
            continue
        if msg.get("stop"):
            listener.close()
            _wait(children, STOP_WAIT_S)
            os._exit(0)  # its end closes `conn`: the caller knows the server is gone
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            listener.close()
            return _child(conn, fds, msg)
        children.add(pid)
        for fd in fds:
            os.close(fd)
        conn.close()
    return 0


def _send(s: socket.socket, msg: dict, fds: list[int]) -> None:
    body = json.dumps(msg).encode()
    socket.send_fds(s, [len(body).to_bytes(_HEADER, "big")], fds)
    s.sendall(body)


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    head, fds, _, _ = socket.recv_fds(conn, _HEADER, len(_FDS))
    head += _read(conn, _HEADER - len(head))
    return json.loads(_read(conn, int.from_bytes(head, "big"))), fds


def _read(conn: socket.socket, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = conn.recv(min(n, 1 << 16))
        if not chunk:
            raise OSError("the job closed its connection mid-request")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _reap(children: set[int]) -> None:
    for pid in list(children):
        try:
            done = os.waitpid(pid, os.WNOHANG)[0]
        except ChildProcessError:
            done = pid
        if done:
            children.discard(pid)


def _wait(children: set[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while children and time.monotonic() < deadline:
        _reap(children)
        time.sleep(0.05)
    for pid in children:  # still running: they were told to unwind and did not
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _child(conn: socket.socket, fds: list[int], msg: dict) -> int:
    """In the forked child: become the job's cell process and measure the cell."""
    for fd, target in zip(fds, _FDS, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    for sig in _FORWARDED:  # a fresh process's handlers (the cell sets its own)
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    os.chdir(msg["cwd"])
    os.environ.clear()
    os.environ.update(msg["env"])
    sys.argv = ["scripts/run_cell.py", *msg["argv"]]
    conn.sendall(f"pid {os.getpid()}\n".encode())
    done, gone = threading.Event(), threading.Event()
    threading.Thread(
        target=_orphaned, args=(conn, done, gone), name="wattflow-job", daemon=True
    ).start()
    from wattflow import orphan
    from wattflow.cell_job import main

    orphan.end_with_job(gone.is_set)  # the job's end, not this fork's parent's
    try:
        code = main(msg["argv"], own_process=False)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except BaseException as exc:  # noqa: BLE001 - what an uncaught exception prints
        import traceback

        traceback.print_exc()
        code = 128 + signal.SIGINT if isinstance(exc, KeyboardInterrupt) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    done.set()
    with contextlib.suppress(OSError):
        conn.sendall(f"exit {code}\n".encode())
    return code  # the process exits as any Python does; its end closes the job's stream


def _orphaned(conn: socket.socket, done: threading.Event, gone: threading.Event) -> None:
    """The job never writes after its request: end of stream before the cell is done means
    the job is gone (killed), so the cell unwinds as on Snakemake's SIGTERM (and, should it
    reach its commit first, writes no cell.json: wattflow.orphan)."""
    with contextlib.suppress(OSError):
        while conn.recv(1):
            pass
    if not done.is_set():
        gone.set()
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    """python -m wattflow.forkserver serve STATE_DIR OWNER_PID"""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "serve" or not args[2].isdigit():
        sys.exit(main.__doc__)
    sys.exit(serve(args[1], int(args[2])))


if __name__ == "__main__":
    main()
