"""`python -m wattflow.client.parrot.check [--check]`: prepare Parrot's source and interpreter
(wattflow.client.parrot.env) and, with --check, start its serving core and openai engine once
(wattflow.client.parrot.launch), open a session and stop them: the first thing to run on a new host.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request

from wattflow.client.parrot.env import ParrotUnavailable, prepare
from wattflow.client.parrot.launch import ParrotServer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m wattflow.client.parrot.check",
        description="Prepare Parrot's source and interpreter (docs/parrot.md).",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="also start Parrot's serving core and openai engine once, and stop them",
    )
    args = p.parse_args(argv)
    try:
        env = prepare()
    except ParrotUnavailable as exc:
        raise SystemExit(f"wattflow: {exc}") from None
    out = {"src": str(env.src), **env.describe()}
    if args.check:
        t = time.monotonic()
        server = ParrotServer(env, endpoint="http://127.0.0.1:9/v1", api_key="x", model="m")
        try:
            server.start()
        except RuntimeError as exc:
            raise SystemExit(f"wattflow: Parrot did not start: {exc}") from None
        try:
            started = round(time.monotonic() - t, 2)
            req = urllib.request.Request(
                f"{server.core_url}/v1/session",
                data=json.dumps({"api_key": "wattflow", "apps": []}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                session = json.loads(r.read())
            out["check"] = {"started_s": started, "session_id": session["session_id"]}
        except (OSError, ValueError, KeyError) as exc:
            raise SystemExit(f"wattflow: Parrot's core did not open a session: {exc}") from None
        finally:
            server.stop()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
