"""The live page at /ui/ in a real browser (headless Chromium over the DevTools protocol)
against the running stack, with an OPC UA simulator streaming: the key typed into the page
becomes a ticket (never part of a URL), the values on the page follow the simulator, the trend
fills, and once the simulator pauses the page shows exactly the newest values in the database.
Writes a screenshot to .local/test/live_page.png."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ingest.core.config import Settings
from tests.cdp import Browser
from tests.conftest import TenantHandle
from tests.helpers import SimProcess, db_fetch, wait_for

WELL = "PAD-1"


@pytest.fixture
def streaming(tenant: TenantHandle, stack: Settings) -> Iterator[dict[str, Any]]:
    sim = SimProcess(1, 3, 100)
    try:
        body = sim.connection_body("live-page", publishing_interval_ms=100)
        for t in body["tags"]:
            t["well"] = WELL
        r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=body)
        assert r.status_code == 201, r.text
        ids = [t["tag_id"] for t in r.json()["tags"]]
        dsn = stack.dsn(tenant.db)
        sim.resume()
        wait_for(
            lambda: db_fetch(dsn, "SELECT count(DISTINCT tag_id) AS n FROM scada_readings")[0]["n"] == len(ids),
            120,
            "every tag streaming into the database",
        )
        yield {"sim": sim, "ids": ids, "dsn": dsn}
    finally:
        sim.kill()


def _db_latest(dsn: str, ids: list[int]) -> dict[str, str]:
    rows = db_fetch(
        dsn,
        "SELECT DISTINCT ON (tag_id) tag_id, value FROM scada_readings WHERE tag_id = ANY($1::int[]) "
        "ORDER BY tag_id, time DESC",
        ids,
    )
    return {str(r["tag_id"]): repr(float(r["value"])) for r in rows}


PAGE_VALUES = """Object.fromEntries([...document.querySelectorAll('#values tr')].map(
    tr => [tr.dataset.tagId, tr.querySelector('.value').dataset.value]))"""


def _js_number(s: str | None) -> str | None:
    return None if s is None else repr(float(s))


async def test_live_page_follows_the_simulator(
    tenant: TenantHandle, streaming: dict[str, Any], api: str, stack: Settings
) -> None:
    ids, dsn, sim = streaming["ids"], streaming["dsn"], streaming["sim"]
    async with Browser() as b:
        await b.goto(f"{api}/ui/#tenant={tenant.slug}")
        await b.eval(f"document.getElementById('key').value = {json.dumps(tenant.key)}")
        await b.eval("document.getElementById('connect').requestSubmit()")

        async def page(expr: str) -> Any:
            return await b.eval(expr)

        async def until(expr: str, ok: Any, what: str, timeout_s: float = 180.0) -> Any:
            """Poll ``expr`` in the page until ``ok(value)``; fail after ``timeout_s`` (a guard
            against hanging on a loaded machine, not a timed assert)."""
            deadline = time.monotonic() + timeout_s
            while not ok(v := await page(expr)):
                status = await page("document.getElementById('status').textContent")
                assert time.monotonic() < deadline, f"gave up waiting for {what}: {v!r} (status {status!r})"
                await asyncio.sleep(0.1)
            return v

        # Live: a snapshot, then updates arriving as the simulator counts up.
        await until("Number(document.getElementById('updates').textContent)", lambda n: n >= 5, "updates")
        first = await page(PAGE_VALUES)
        assert set(first) == {str(i) for i in ids}
        # Pick the well: the trend loads its history, then grows with live points.
        await b.eval(
            f"(() => {{ const s = document.getElementById('well'); s.value = {json.dumps(WELL)};"
            " s.dispatchEvent(new Event('change')); })()"
        )
        await until("document.getElementById('trend').dataset.points || '0'", lambda n: int(n) > 10, "trend")
        # The table now names the well's tags (a fresh snapshot for the new selection).
        wells = "[...document.querySelectorAll('#values td.well')].map(td => td.textContent)"
        await until(wells, lambda w: w == [WELL] * len(ids), "the well's tags listed")
        # Values move forward with the simulator's counting.
        await until(
            PAGE_VALUES,
            lambda later: all(float(later.get(k) or 0) > float(v or 0) for k, v in first.items()),
            "values moving forward",
        )
        # Paused: the page settles on exactly the newest values in the database.
        sim.pause()
        settled: dict[str, str] = {}
        deadline = time.monotonic() + 180
        while True:
            db = await asyncio.to_thread(_db_latest, dsn, ids)
            shown = {k: _js_number(v) for k, v in (await page(PAGE_VALUES)).items()}
            if (shown == db and db == settled) or time.monotonic() > deadline:
                break
            settled = db
            await asyncio.sleep(0.2)
        assert shown == db, (shown, db)
        # The key never went into a URL: not the page's, not any request's.
        urls = await page("[location.href, ...performance.getEntriesByType('resource').map(e => e.name)]")
        assert urls and not any(tenant.key in u for u in urls)
        assert any("ticket=lt_" in u for u in urls)
        # The stream was opened where the ticket's answer said: the replica's own port, not the
        # proxy's origin the page came from (a cross-origin EventSource, allowed for tickets).
        via = await page("document.getElementById('status').dataset.via")
        assert via and via != api and any(u.startswith(f"{via}/v1/tenants/") and "/stream?" in u for u in urls)
        shot = await b.screenshot(stack.local_dir / "live_page.png")
        print(f"\nlive page screenshot: {shot}")
