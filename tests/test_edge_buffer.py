"""The edge agent's disk buffer, push body, answer handling and config file, without services:
every reading is either sent once under a stable key or recorded in a gap; a bad file names
its field."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from ingest.core.batch import ReadingBatch
from ingest.core.errors import EdgeConfigInvalid
from ingest.core.models import GAP_QUALITY
from ingest.edge.buffer import EdgeBuffer, Sealed
from ingest.edge.config import load_config
from ingest.edge.encode import PushedTag
from ingest.edge.pusher import Outcome, classify
from ingest.push.batch import prepare_batch
from ingest.push.errors import PayloadInvalid
from ingest.push.payload import decode_payload
from ingest.push.tags import PushTag

T0 = 1_780_000_000_000_000  # µs


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def batch(tags: list[int], start: int, n: int, step_us: int = 1000) -> ReadingBatch:
    """n readings per tag, values start..start+n-1, at T0 + value*step."""
    t = np.repeat(np.arange(start, start + n, dtype=np.int64), len(tags))
    return ReadingBatch(
        "b",
        T0 + t * step_us,
        np.tile(np.asarray(tags, np.int32), n),
        t.astype(np.float64),
        np.zeros(len(t), np.int32),
    )


def open_buffer(path: Path, clock: Clock, **kw: Any) -> tuple[EdgeBuffer, dict[tuple[str, str], int]]:
    b = EdgeBuffer(
        path, "acme", max_bytes=kw.get("max_bytes", 1 << 30), max_age_s=kw.get("max_age_s", 1e9), clock=clock
    )
    ids = b.register_tags([PushedTag("W1", "p", "psi"), PushedTag("W1", "q", None)])
    return b, ids


def points(s: Sealed) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(gzip.decompress(s.body))["data_points"]
    return out


def drain(b: EdgeBuffer, max_points: int = 1000) -> list[dict[str, Any]]:
    got = []
    while (s := b.next_batch(max_points, 0.0)) is not None:
        got += points(s)
        b.delivered(s)
    return got


def test_oldest_first_stable_key_deleted_only_after_delivery(tmp_path: Path) -> None:
    clock = Clock()
    b, ids = open_buffer(tmp_path / "b.db", clock)
    p = ids[("W1", "p")]
    for k in range(5):
        b.append(batch([p], k * 10, 10))
    assert b.next_batch(1000, due_s=1.0) is None  # nothing has waited long enough, and not full
    clock.t += 2
    first = b.next_batch(25, due_s=1.0)
    assert first is not None and first.rows == 25
    assert [x["value"] for x in points(first)] == list(range(25))
    # Not delivered: a restart hands out the same bytes under the same key.
    b.close()
    b, ids = open_buffer(tmp_path / "b.db", clock)
    again = b.next_batch(25, 1.0)
    assert again == first
    b.delivered(again)
    rest = drain(b, 25)
    assert [x["value"] for x in rest] == list(range(25, 50))
    assert b.stats().rows == 0 and b.stats().bytes == 0
    assert b.last_seen() == {p: T0 + 49 * 1000}
    nxt = b.append(batch([p], 50, 1)) or b.next_batch(10, 0.0)
    assert isinstance(nxt, Sealed) and nxt.key != first.key  # keys are never reused


def test_batches_in_flight_are_skipped_not_resealed(tmp_path: Path) -> None:
    clock = Clock()
    b, ids = open_buffer(tmp_path / "b.db", clock)
    b.append(batch([ids[("W1", "p")]], 0, 30))
    one = b.next_batch(10, 0.0)
    assert one is not None
    two = b.next_batch(10, 0.0, frozenset({one.seq}))
    assert two is not None and two.seq > one.seq
    assert [x["value"] for x in points(two)] == list(range(10, 20))
    assert b.next_batch(10, 0.0) == one  # the oldest again once it is no longer in flight
    b.delivered(two)
    b.delivered(one)
    assert [x["value"] for x in drain(b)] == list(range(20, 30))


def test_bytes_bound_turns_the_oldest_into_gaps_never_silent(tmp_path: Path) -> None:
    clock = Clock()
    b, ids = open_buffer(tmp_path / "b.db", clock, max_bytes=64 * 1024)
    p, q = ids[("W1", "p")], ids[("W1", "q")]
    dropped = 0.0
    for k in range(40):  # 40 x 200 readings x 24 bytes = 192 KB, three times the bound
        dropped += b.append(batch([p, q], k * 100, 100))
        clock.t += 0.1
    st = b.stats()
    assert dropped > 0 and st.bytes <= 64 * 1024 and st.gap_readings == dropped
    got = drain(b)
    markers = [x for x in got if x["quality_code"] == "DATA_LOST"]
    values = [x for x in got if x["quality_code"] == "GOOD"]
    # One marker per tag for the whole dropped run, at its first reading, counting it.
    assert sorted((m["parameter_name"], m["value"]) for m in markers) == [("p", dropped / 2), ("q", dropped / 2)]
    assert all(m["timestamp"].startswith("20") and m["timestamp"].endswith("Z") for m in markers)
    assert len(values) + dropped == 40 * 200
    for name in ("p", "q"):
        kept = sorted(x["value"] for x in values if x["parameter_name"] == name)
        assert kept == list(range(int(dropped / 2), 4000))  # the oldest went, the newest stayed
    assert all(x["unit"] == "dimensionless" for x in got if x["parameter_name"] == "q")


def test_age_bound_and_a_sealed_batch_dropped(tmp_path: Path) -> None:
    clock = Clock()
    b, ids = open_buffer(tmp_path / "b.db", clock, max_age_s=3600)
    p = ids[("W1", "p")]
    b.append(batch([p], 0, 10))
    sealed = b.next_batch(5, 0.0)  # in flight when the link went down
    assert sealed is not None
    clock.t += 3000
    b.append(batch([p], 10, 10))
    clock.t += 1000  # the first 10 are now older than an hour
    assert b.enforce_bounds() == 10
    b.delivered(sealed)  # an answer for a dropped batch changes nothing
    got = drain(b)
    assert [(x["quality_code"], x["value"]) for x in got if x["quality_code"] == "DATA_LOST"] == [
        ("DATA_LOST", 10.0)
    ]
    assert sorted(x["value"] for x in got if x["quality_code"] == "GOOD") == list(range(10, 20))


def test_refused_batch_kept_aside_as_a_gap(tmp_path: Path) -> None:
    clock = Clock()
    b, ids = open_buffer(tmp_path / "b.db", clock)
    b.append(batch([ids[("W1", "p")]], 0, 7))
    s = b.next_batch(1000, 0.0)
    assert s is not None
    b.refused(s, 400, '{"error": "validation_error"}')
    got = drain(b)
    assert [(x["quality_code"], x["value"]) for x in got] == [("DATA_LOST", 7.0)]
    assert b.db.execute("SELECT key, status FROM rejected").fetchall() == [(s.key, 400)]


def test_push_body_is_the_push_endpoints_schema_gap_markers_included(tmp_path: Path) -> None:
    clock = Clock()
    b, ids = open_buffer(tmp_path / "b.db", clock)
    p = ids[("W1", "p")]
    rb = batch([p], 1, 4)
    rb.value[1] = np.nan  # a value JSON cannot carry: sent as a one-reading gap
    rb.quality[2] = GAP_QUALITY  # a session's marker, count unknown
    rb.value[2] = np.nan
    rb.quality[3] = np.int32(-2147483648)  # Bad
    b.append(rb)
    s = b.next_batch(1000, 0.0)
    assert s is not None and s.markers == 2
    payload = decode_payload(gzip.decompress(s.body), 1000)
    assert [(x.quality_code, x.value) for x in payload.data_points] == [
        ("GOOD", 1.0),
        ("DATA_LOST", 1.0),
        ("DATA_LOST", None),
        ("BAD", 4.0),
    ]
    prepared = prepare_batch("x", payload.data_points, {("W1", "p"): PushTag(9, "bar")}, T0 * 2, 300)
    assert prepared.batch is not None and prepared.accepted == 4
    assert prepared.batch.quality.tolist()[1:3] == [GAP_QUALITY, GAP_QUALITY]
    v = prepared.batch.value
    assert v[1] == 1.0 and np.isnan(v[2])  # counts are not converted psi -> bar
    assert abs(v[0] - 1 / 14.5038) < 1e-4


def test_null_value_only_for_a_gap_marker() -> None:
    pt = {"well_id": "W", "timestamp": "2026-01-01T00:00:00Z", "parameter_name": "p", "value": None, "unit": "psi"}
    with pytest.raises(PayloadInvalid) as e:
        decode_payload(json.dumps({"tenant_id": "t", "data_points": [pt]}).encode(), 10)
    assert e.value.details == [{"field": "data_points[0].value", "error": "must be a number"}]
    ok = decode_payload(
        json.dumps({"tenant_id": "t", "data_points": [pt | {"quality_code": "DATA_LOST"}]}).encode(), 10
    )
    assert ok.data_points[0].value is None


def answer(status: int, body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body or {}, headers=headers)


def test_answers_sorted_into_outcomes() -> None:
    ok = classify(answer(200, {"accepted_count": 3, "rejected_count": 1, "rejected": [{"reason": "unknown_tag"}]}))
    assert (ok.outcome, ok.accepted, ok.rejected_reasons) == (Outcome.DELIVERED, 3, ("unknown_tag",))
    for s in (401, 403):
        assert classify(answer(s, {"error": "invalid_token", "message": "no"})).outcome is Outcome.STOPPED
    limited = classify(
        answer(429, {"error": "rate_limit_exceeded", "retry_after_seconds": 7}, **{"Retry-After": "7"})
    )
    assert (limited.outcome, limited.retry_after_s) == (Outcome.RETRY, 7.0)
    assert classify(answer(503, {}, **{"Retry-After": "5"})).retry_after_s == 5.0
    assert classify(answer(502)).outcome is Outcome.RETRY
    assert classify(answer(409, {}, **{"Retry-After": "1"})).outcome is Outcome.RETRY  # first one still running
    for s in (400, 409):
        assert classify(answer(s, {"error": "x"})).outcome is Outcome.REFUSED
    # Too big for the tenant: every batch would be refused alike, so pushing stops instead.
    assert classify(answer(413, {"error": "payload_too_large"})).outcome is Outcome.STOPPED
    count = {"field": "data_points", "error": "at most 500 points per request (1000 sent)"}
    assert classify(answer(400, {"error": "validation_error", "details": [count]})).outcome is Outcome.STOPPED


GOOD = """
cluster: {url: "http://127.0.0.1:1", tenant: acme, api_key: sk_x}
devices:
  - name: d1
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:4840
    tags: [{name: p, node_id: "ns=2;s=P", unit: psi}]
"""


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (("ns=2;s=P", "bogus"), "devices.0.tags.0.node_id"),
        (("opc.tcp://127.0.0.1:4840", "http://x"), "devices.0.endpoint"),
        (("api_key: sk_x", "api_key: sk_x, colour: red"), "cluster.colour"),
        (("tenant: acme", "tenant: acme, timeout_s: -1"), "cluster.timeout_s"),
        (("unit: psi", "unit: psi, well: W}, {name: p, node_id: 'ns=2;s=Q', well: W"), "devices.0.tags"),
        (("api_key: sk_x", "api_key_file: /nonexistent/key"), "cluster.api_key_file"),
        (("devices:", "buffer: {max_bytes: lots}\ndevices:"), "buffer.max_bytes"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, edit: tuple[str, str], field: str) -> None:
    f = tmp_path / "edge.yaml"
    f.write_text(GOOD.replace(*edit))
    with pytest.raises(EdgeConfigInvalid) as e:
        load_config(f)
    assert e.value.field == field, str(e.value)


def test_cli_check_exit_codes_and_no_ray(tmp_path: Path) -> None:
    f = tmp_path / "edge.yaml"
    f.write_text(GOOD.replace("max_bytes", "x"))
    ok = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "edge", "--config", str(f), "--check"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and json.loads(ok.stdout.splitlines()[-1])["ok"] is True
    f.write_text(GOOD.replace("ns=2;s=P", "bogus"))
    bad = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "edge", "--config", str(f), "--check"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "devices.0.tags.0.node_id" in bad.stderr
    probe = "import sys, serve_app.cli, ingest.edge.agent; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"
    example = Path(__file__).parent.parent / "deploy" / "edge.example.yaml"
    text = example.read_text().replace("api_key_file: /etc/scada-edge/api_key", "api_key: sk_example")
    f.write_text(text)
    assert load_config(f).buffer.max_bytes == 10 * 1024**3
