"""Accepted implies runnable: generated connection and tag payloads, per-tag settings included,
are sent through the live API (and through the bulk import's planner offline); for every one
accepted, the session the coordinator would run is built from what was stored, with the code
the session uses (``load_specs`` -> ``make_session``), without connecting."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import tempfile
from collections import Counter
from typing import Any

from ingest.core.config import Settings
from ingest.core.models import ConnectionSpec, Protocol, Tenant, TenantStatus
from ingest.device.session_inputs import tag_spec
from ingest.device.sessions import make_session
from ingest.store.secrets import SecretBox
from ingest.store.tag_bulk import plan_import
from ingest.store.tenant_store import TenantStore
from tests.conftest import TenantHandle
from tests.test_registration_checks import GOOD_MODBUS_TAGS, GOOD_NODE_IDS, _modbus_tag, _node_id, _security

os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "scada-ingest-hypothesis")
)
from hypothesis import HealthCheck, given, note  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

API_EXAMPLES = int(os.environ.get("SCADA_PROPERTY_API_EXAMPLES", "150"))
OFFLINE_EXAMPLES = int(os.environ.get("SCADA_PROPERTY_OFFLINE_EXAMPLES", "400"))

_settings = st.fixed_dictionaries(
    {},
    optional={
        "sampling_interval_ms": st.one_of(st.none(), st.sampled_from([0, 0.5, 100, 86_400_000, 86_400_001, -1])),
        "queue_size": st.one_of(st.none(), st.sampled_from([1, 1000, 100_000, 100_001, 0])),
        "discard_oldest": st.booleans(),
        "deadband_type": st.one_of(st.none(), st.sampled_from(["absolute", "percent", "relative"])),
        "deadband_value": st.sampled_from([0, 0.5, 2.5, 100, 100.5, -1]),
    },
)
# Weighted towards what registration accepts (a payload with one bad tag is refused whole), so
# that many payloads reach the session build; every refusal path still comes up.
_good_settings = st.fixed_dictionaries(
    {},
    optional={
        "sampling_interval_ms": st.sampled_from([0, 100, 2500.5]),
        "queue_size": st.sampled_from([1, 10, 1000]),
        "discard_oldest": st.booleans(),
        "deadband_type": st.sampled_from(["absolute", "percent"]),
    },
).map(lambda d: {**d, "deadband_value": 1.5} if d.get("deadband_type") else d)
_good_node = st.fixed_dictionaries({"node_id": st.sampled_from(GOOD_NODE_IDS)})
_opcua_tag = st.builds(
    lambda a, b: {**a, **b},
    st.one_of(_good_node, _good_node, _good_node, st.fixed_dictionaries({}, optional={"node_id": _node_id})),
    st.one_of(st.just({}), _good_settings, _good_settings, _settings),
)
_good_modbus = st.sampled_from(GOOD_MODBUS_TAGS)
_modbus_tag_with_settings = st.one_of(
    _good_modbus,
    _good_modbus,
    _good_modbus,
    _good_modbus,
    st.builds(lambda a, b: {**a, **b}, _good_modbus, _settings),
    _modbus_tag,
)
_good_endpoint = {"modbus": "tcp://127.0.0.1:1", "opcua": "opc.tcp://127.0.0.1:1/never"}

_connection = st.one_of(
    st.fixed_dictionaries(
        {
            "protocol": st.just("modbus"),
            "endpoint": st.sampled_from(
                ["tcp://127.0.0.1:1", "tcp://plc:1", "tcp://plc:65536", "opc.tcp://plc:4840"]
            ),
            "tags": st.lists(_modbus_tag_with_settings, max_size=4),
            "security": st.one_of(st.just({}), _security),
        }
    ),
    st.fixed_dictionaries(
        {
            "protocol": st.just("opcua"),
            "endpoint": st.sampled_from(
                ["opc.tcp://127.0.0.1:1/never", "opc.tcp://h:1", "opc.tcp://h:2", "tcp://h:4840"]
            ),
            "tags": st.lists(_opcua_tag, max_size=4),
            "security": st.one_of(st.just({}), _security),
        }
    ),
)


def _build_all(specs: list[Any]) -> None:
    def ignore(*_: Any) -> None:
        return None

    for spec in specs:
        if not spec.tags:
            continue  # no tags: the host runs no session (IDLE; test_a_connection_without_tags_is_idle)
        session = make_session(spec, ignore, ignore, ignore, ignore)
        assert isinstance(session.stats, dict)


def test_property_accepted_by_the_api_implies_a_session_can_be_built(
    tenant: TenantHandle, stack: Settings
) -> None:
    outcomes: Counter[str] = Counter()
    tenant_row = Tenant(tenant.id, tenant.slug, "t", TenantStatus.ACTIVE, "")
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(TenantStore.connect(stack.dsn(tenant.db), SecretBox(stack.master_key)))
    counter = iter(range(10**9))

    @hsettings(max_examples=API_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(draw=_connection)
    def check(draw: dict[str, Any]) -> None:
        payload = {
            "name": f"c{next(counter)}",
            "endpoint": draw["endpoint"],
            "protocol": draw["protocol"],
            "enabled": False,  # built here, not run
            **draw["security"],
            "tags": [{**t, "name": f"t{i}"} for i, t in enumerate(draw["tags"])],
        }
        r = tenant.client.post(f"/v1/tenants/{tenant.slug}/connections", json=payload)
        assert r.status_code in (201, 422), r.text
        outcomes["accepted" if r.status_code == 201 else "refused"] += 1
        if r.status_code == 422:
            note(f"refused: {r.json()['details']}")
            return
        # What the coordinator hands out for it, from the stored rows: must build.
        cid = r.json()["id"]
        specs = loop.run_until_complete(store.load_specs(tenant_row, cid))
        assert len(specs) == 1
        full = loop.run_until_complete(store.load_specs(tenant_row))  # enabled ones only: none
        assert all(s.connection_id != cid for s in full)
        rows = loop.run_until_complete(store.list_tags(cid))
        _build_all([dataclasses.replace(specs[0], tags=tuple(tag_spec(specs[0].protocol, t) for t in rows))])

    try:
        check()
    finally:
        loop.run_until_complete(store.close())
        loop.close()
    print(f"\nproperty through the API: {sum(outcomes.values())} connection payloads, {dict(outcomes)}")
    assert outcomes["accepted"] > 0 and outcomes["refused"] > 0


@hsettings(max_examples=OFFLINE_EXAMPLES, deadline=None, database=None)
@given(protocol=st.sampled_from([Protocol.OPCUA, Protocol.MODBUS]), data=st.data())
def test_property_rows_a_bulk_import_accepts_build_a_session(protocol: Protocol, data: st.DataObject) -> None:
    strategy = _opcua_tag if protocol is Protocol.OPCUA else _modbus_tag_with_settings
    tags = data.draw(st.lists(strategy, min_size=1, max_size=6))
    rows = [(i + 2, {**t, "name": f"t{i}"}) for i, t in enumerate(tags)]
    plan = plan_import(protocol, rows, {}, "create")
    if plan.errors:  # an import with a bad row writes nothing
        note(f"refused rows: {plan.errors}")
        return
    accepted = plan.create

    endpoint = "opc.tcp://127.0.0.1:1" if protocol is Protocol.OPCUA else "tcp://127.0.0.1:1"
    specs = [
        ConnectionSpec(
            "t",
            "t",
            "c",
            protocol,
            endpoint,
            1000,
            tags=tuple(tag_spec(protocol, {**t.model_dump(), "tag_id": i + 1}) for i, t in enumerate(accepted)),
        )
    ]
    _build_all(specs)


async def test_a_connection_without_tags_is_idle_not_failed() -> None:
    """Found by the property above: a Modbus session refuses an empty point list, so a Modbus
    connection registered without tags showed FAILED. The host now runs no session for it."""
    from ingest.device.host import ConnectionHost

    def no_sender(_: ConnectionSpec) -> Any:
        raise AssertionError("no session, so no sender")

    host = ConnectionHost("test", no_sender)
    specs = [
        ConnectionSpec("t", "t", f"c-{p.value}", p, e, 1000)
        for p, e in ((Protocol.MODBUS, "tcp://127.0.0.1:1"), (Protocol.OPCUA, "opc.tcp://127.0.0.1:1"))
    ]
    result = await host.apply(specs)
    assert result["failed"] == {} and sorted(result["started"]) == ["c-modbus", "c-opcua"]
    status = host.status()["connections"]
    assert {c["health"] for c in status.values()} == {"IDLE"}
    assert host.retry_failed() == []
    await host.close()
