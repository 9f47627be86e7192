"""Open an HTML file in headless Chromium and report what a reader would see: every
image's load state, console errors and uncaught exceptions, and a screenshot.

Talks the Chrome DevTools Protocol over a websocket (aiohttp, already a dependency), so
only Debian's `chromium` package is needed (no chromedriver, no Selenium).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)
PACKAGES = ("chromium",)
IMAGES_JS = """JSON.stringify(Array.from(document.images).map(i => ({
  alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})))"""


def log(msg: str) -> None:
    print(f"[browser] {msg}", file=sys.stderr, flush=True)


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def why_not() -> str | None:
    """Why Chromium cannot be had here, or None (installing it with apt-get as root)."""
    if chromium():
        return None
    if not sys.platform.startswith("linux"):
        return "browser test: needs Linux (Debian's chromium package)"
    if os.geteuid() != 0:
        return "browser test: chromium is not installed and installing it needs root"
    if not shutil.which("apt-get"):
        return "browser test: chromium is not installed and there is no apt-get"
    return None


def install() -> None:
    """Debian's chromium, as tests/test_slurm.py installs its packages (root, apt-get)."""
    if chromium():
        return
    t0 = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=300"]  # another test may hold it
    cmd = [*apt, "install", "-y", "--no-install-recommends", *PACKAGES]
    if subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode != 0:
        for c in ([*apt, "update"], cmd):
            out = subprocess.run(c, env=env, capture_output=True, text=True, timeout=600)
            assert out.returncode == 0, f"{' '.join(c)} failed:\n{out.stdout[-2000:]}{out.stderr}"
    log(f"installed {' '.join(PACKAGES)} in {time.monotonic() - t0:.0f} s")


@dataclass
class PageReport:
    images: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, load failures
    screenshot: Path | None = None

    @property
    def broken_images(self) -> list[dict[str, Any]]:
        return [i for i in self.images if not i["complete"] or i["width"] <= 0]


class _Cdp:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.next_id, self.events = ws, 0, []

    async def call(self, method: str, **params: Any) -> dict:
        self.next_id += 1
        mid = self.next_id
        await self.ws.send_str(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    async def wait_for(self, method: str, timeout: float) -> None:
        if any(e.get("method") == method for e in self.events):
            return
        async with asyncio.timeout(timeout):
            while True:
                msg = json.loads((await self.ws.receive()).data)
                self.events.append(msg)
                if msg.get("method") == method:
                    return


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a)) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            out.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
    return out


async def _inspect(port: int, url: str, shot: Path | None, width: int) -> PageReport:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
            pages = [t for t in await r.json() if t.get("type") == "page"]
        async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            cdp = _Cdp(ws)
            for domain in ("Page", "Runtime", "Log"):
                await cdp.call(f"{domain}.enable")
            await cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=900,
                           deviceScaleFactor=1, mobile=False)  # fmt: skip
            await cdp.call("Page.navigate", url=url)
            await cdp.wait_for("Page.loadEventFired", timeout=60)
            res = await cdp.call("Runtime.evaluate", expression=IMAGES_JS, returnByValue=True)
            report = PageReport(images=json.loads(res["result"]["value"]))
            if shot is not None:
                metrics = await cdp.call("Page.getLayoutMetrics")
                height = min(int(metrics["cssContentSize"]["height"]) + 1, 16000)
                await cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                               deviceScaleFactor=1, mobile=False)  # fmt: skip
                png = await cdp.call("Page.captureScreenshot", format="png")
                shot.write_bytes(base64.b64decode(png["data"]))
                report.screenshot = shot
            await asyncio.sleep(0.2)  # late console messages
            await cdp.call("Runtime.evaluate", expression="0")
            report.errors = _errors(cdp.events)
            return report


def open_page(
    html_file: Path, profile: Path, screenshot: Path | None = None, width: int = 1280
) -> PageReport:
    """Load `html_file` in a fresh headless Chromium (user data in `profile`)."""
    exe = chromium()
    assert exe, "chromium is not installed"
    profile.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its renderers and helpers are in its process group
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not open its DevTools port in 60 s")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        url = html_file.resolve().as_uri()
        return asyncio.run(_inspect(port, url, screenshot, width))
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the Chromium this module started, and its process group (helpers)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
