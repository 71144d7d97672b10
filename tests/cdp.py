"""Headless Chromium (Debian's ``chromium``) driven over the Chrome DevTools Protocol with the
``websockets`` library: start it, open a page, evaluate JavaScript, take a screenshot."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect


class Browser:
    """One headless Chromium process with one page. Use ``async with Browser() as b``."""

    def __init__(self, width: int = 1100, height: int = 900) -> None:
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        assert exe, "chromium missing: scripts/bootstrap.sh installs Debian's chromium package"
        # Chromium's helpers (crashpad, utility processes) can outlive the browser for a moment
        # and write to the profile while it is removed: clean-up errors are not the test's verdict.
        self._dir = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        self._log = open(Path(self._dir.name) / "chromium.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                exe,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._dir.name}/profile",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,  # its own process group: __aexit__ ends the helpers too
        )
        self._ids = itertools.count(1)
        self.ws: ClientConnection | None = None

    async def __aenter__(self) -> Browser:
        port_file = Path(self._dir.name) / "profile" / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert self.proc.poll() is None, (
                f"chromium exited: {(Path(self._dir.name) / 'chromium.log').read_text()[-2000:]}"
            )
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with httpx.AsyncClient(timeout=30) as c:
            for _ in range(100):
                pages = [
                    t for t in (await c.get(f"http://127.0.0.1:{port}/json/list")).json() if t["type"] == "page"
                ]
                if pages:
                    break
                await asyncio.sleep(0.1)
        self.ws = await connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        return self

    async def __aexit__(self, *_: Any) -> None:
        if self.ws is not None:
            await self.ws.close()
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._signal_group(signal.SIGKILL)  # helpers left behind by the browser
        self._log.close()
        for _attempt in range(20):
            if await asyncio.to_thread(_remove_tree, self._dir.name):
                break
            await asyncio.sleep(0.1)
        self._dir.cleanup()

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        n = next(self._ids)
        await self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:  # events interleave with answers; answers carry our id
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 60))
            if msg.get("id") == n:
                assert "error" not in msg, (method, msg["error"])
                out: dict[str, Any] = msg.get("result", {})
                return out

    async def eval(self, expression: str) -> Any:
        r = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        for _ in range(600):
            if await self.eval("document.readyState") == "complete":
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"page did not load: {url}")

    async def screenshot(self, path: Path) -> Path:
        r = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(_write, path, base64.b64decode(r["data"]))
        return path


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _remove_tree(path: str) -> bool:
    shutil.rmtree(path, ignore_errors=True)
    return not os.path.exists(path)
