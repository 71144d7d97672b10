"""Registration refuses what no device session could run, naming the field, at create and on edit.

Unit tests go through the payload models and the edit checks (no services); a property test
builds the real session (``make_session``, not run) from every payload the model accepts, the
way the coordinator would hand it out; API tests check the same refusals through the live app.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from ingest.core.errors import InvalidRegistration
from ingest.core.models import ConnectionSpec, Protocol, SecurityMode, SecurityPolicy
from ingest.device.session_inputs import tag_spec
from ingest.device.sessions import make_session
from ingest.store.registration import (
    ConnectionCreate,
    ConnectionUpdate,
    TagCreate,
    TagUpdate,
    check_connection_edit,
    check_tag_edit,
)
from tests.conftest import TenantHandle

MODBUS: dict[str, Any] = {"name": "plc", "protocol": "modbus", "endpoint": "tcp://127.0.0.1:1", "enabled": False}
OPCUA: dict[str, Any] = {
    "name": "rtu",
    "protocol": "opcua",
    "endpoint": "opc.tcp://127.0.0.1:1/never",
    "enabled": False,
}


def fields_of(r: httpx.Response) -> list[str]:
    """The fields a 422 names, in the API's one error body."""
    return [d["field"] for d in r.json()["details"]]


def holding(address: int, **extra: Any) -> dict[str, Any]:
    return {"name": f"h{address}", "modbus_register": "holding", "modbus_address": address, **extra}


# Each: (tag payload, the field the refusal names)
BAD_MODBUS_TAGS: list[tuple[dict[str, Any], str]] = [
    ({"name": "c", "modbus_register": "coil", "modbus_address": 3}, "modbus_data_type"),
    (
        {"name": "d", "modbus_register": "discrete", "modbus_address": 3, "modbus_data_type": "uint16"},
        "modbus_data_type",
    ),
    (
        {"name": "c", "modbus_register": "coil", "modbus_address": 3, "modbus_data_type": "bool", "modbus_bit": 1},
        "modbus_bit",
    ),
    (holding(7, modbus_data_type="float32", modbus_bit=2), "modbus_bit"),
    (holding(7, modbus_bit=2), "modbus_bit"),  # data type defaults to uint16
    (holding(7, modbus_data_type="uint16", modbus_length=2), "modbus_length"),
    (holding(7, modbus_data_type="bool", modbus_bit=2, modbus_length=1), "modbus_length"),
    (holding(65535, modbus_data_type="float32"), "modbus_address"),
    (holding(65533, modbus_data_type="uint64"), "modbus_address"),
    (holding(65530, modbus_data_type="string", modbus_length=8), "modbus_address"),
    (holding(200, modbus_data_type="string"), "modbus_length"),
    ({"name": "n", "modbus_address": 3}, "modbus_register"),
]
GOOD_MODBUS_TAGS: list[dict[str, Any]] = [
    {"name": "c", "modbus_register": "coil", "modbus_address": 3, "modbus_data_type": "bool"},
    {"name": "d", "modbus_register": "discrete", "modbus_address": 65535, "modbus_data_type": "bool"},
    holding(7, modbus_data_type="bool", modbus_bit=15),
    {**holding(7, modbus_data_type="bool", modbus_bit=0), "modbus_register": "input"},
    holding(65534, modbus_data_type="float32", byte_order="CDAB"),
    holding(65532, modbus_data_type="float64"),
    holding(200, modbus_data_type="string", modbus_length=125),
    holding(9),  # uint16, unit 1, ABCD by default
]
BAD_NODE_IDS = ["i=abc", "g=not-a-guid", "ns=70000;i=1", "i=4294967296", "ns=2;i=1;x"]
GOOD_NODE_IDS = [
    "i=85",
    "ns=2;s=W001.T001",
    "ns=65535;i=4294967295",
    "g=09087e75-8e5e-499b-954f-f2a9603db28a",
    "ns=1;b=aGVsbG8=",
]


def refusal(payload: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as e:
        ConnectionCreate.model_validate(payload)
    return str(e.value)


# -- (a) the checks, without services ---------------------------------------------------------
@pytest.mark.parametrize(("tag", "field"), BAD_MODBUS_TAGS)
def test_modbus_tags_no_session_can_read_are_refused(tag: dict[str, Any], field: str) -> None:
    other = {"name": "ok", "modbus_register": "holding", "modbus_address": 1}
    assert f"tags.1.{field}: " in refusal({**MODBUS, "tags": [other, tag]})


@pytest.mark.parametrize("tag", GOOD_MODBUS_TAGS)
def test_good_modbus_tags_are_accepted(tag: dict[str, Any]) -> None:
    ConnectionCreate.model_validate({**MODBUS, "tags": [tag]})


@pytest.mark.parametrize("node_id", BAD_NODE_IDS)
def test_node_ids_the_session_cannot_parse_are_refused(node_id: str) -> None:
    assert "tags.0.node_id: " in refusal({**OPCUA, "tags": [{"name": "t", "node_id": node_id}]})


@pytest.mark.parametrize("node_id", GOOD_NODE_IDS)
def test_good_node_ids_are_accepted(node_id: str) -> None:
    ConnectionCreate.model_validate({**OPCUA, "tags": [{"name": "t", "node_id": node_id}]})


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"endpoint": "tcp://plc:99999"}, "endpoint"),
        ({"endpoint": "tcp://[plc"}, "endpoint"),
        (
            {
                "protocol": "opcua",
                "security_mode": "Sign",
                "security_policy": "Basic256Sha256",
                "endpoint": "opc.tcp://h:4840",
                "password": "pw",
            },
            "password",
        ),
        (
            {
                "protocol": "opcua",
                "security_mode": "Sign",
                "security_policy": "Basic256Sha256",
                "endpoint": "opc.tcp://h:4840",
                "username": "",
            },
            "username",
        ),
    ],
)
def test_connection_settings_the_session_refuses_are_refused(patch: dict[str, Any], field: str) -> None:
    assert field in refusal({**MODBUS, **patch})


def stored_tag(protocol: Protocol, tag: dict[str, Any], tag_id: int = 17) -> dict[str, Any]:
    """A tag as the database holds it after registration (every column present)."""
    row = TagCreate.model_validate(tag).model_dump()
    row.pop("well")
    return {**row, "tag_id": tag_id, "connection_id": "c", "well_id": None}


@pytest.mark.parametrize(
    ("tag", "patch", "field"),
    [
        (
            {"name": "c", "modbus_register": "coil", "modbus_address": 3, "modbus_data_type": "bool"},
            {"modbus_data_type": "uint16"},
            "modbus_data_type",
        ),
        (
            {"name": "c", "modbus_register": "coil", "modbus_address": 3, "modbus_data_type": "bool"},
            {"modbus_data_type": None},
            "modbus_data_type",
        ),
        (holding(7, modbus_data_type="string", modbus_length=4), {"modbus_length": None}, "modbus_length"),
        (holding(7, modbus_data_type="float32"), {"modbus_address": 65535}, "modbus_address"),
        (holding(7, modbus_data_type="bool", modbus_bit=3), {"modbus_data_type": "int16"}, "modbus_bit"),
        (holding(7), {"modbus_register": "coil"}, "modbus_data_type"),
        (holding(7), {"modbus_length": 3}, "modbus_length"),
        (holding(7), {"valid_min": 5, "valid_max": 1}, "valid_min"),
    ],
)
def test_tag_edits_are_checked_on_the_edited_tag(tag: dict[str, Any], patch: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRegistration) as e:
        check_tag_edit(Protocol.MODBUS, stored_tag(Protocol.MODBUS, tag), TagUpdate.model_validate(patch))
    assert e.value.field == field


def test_tag_edits_that_leave_a_readable_tag_pass() -> None:
    row = stored_tag(Protocol.MODBUS, holding(7, modbus_data_type="string", modbus_length=4))
    for patch in (
        {"modbus_length": 8},
        {"modbus_data_type": "float32", "modbus_length": None},
        {"unit": "bar"},
        {},
    ):
        check_tag_edit(Protocol.MODBUS, row, TagUpdate.model_validate(patch))
    opc = stored_tag(Protocol.OPCUA, {"name": "t", "node_id": "ns=2;s=A"})
    check_tag_edit(Protocol.OPCUA, opc, TagUpdate.model_validate({"node_id": "i=85"}))
    for bad, field in (({"node_id": "i=abc"}, "node_id"), ({"node_id": None}, "node_id")):
        with pytest.raises(InvalidRegistration) as e:
            check_tag_edit(Protocol.OPCUA, opc, TagUpdate.model_validate(bad))
        assert e.value.field == field


STORED_CONNECTION = {
    "name": "plc",
    "protocol": "modbus",
    "endpoint": "tcp://127.0.0.1:502",
    "security_mode": "None",
    "security_policy": "None",
    "auto_accept_server_cert": False,
    "username": None,
    "publishing_interval_ms": 1000,
    "enabled": True,
}


@pytest.mark.parametrize(
    ("stored", "patch", "field"),
    [
        ({}, {"endpoint": "opc.tcp://plc:4840"}, "endpoint"),
        ({}, {"endpoint": "tcp://plc:70000"}, "endpoint"),
        ({"protocol": "opcua", "endpoint": "opc.tcp://h:4840"}, {"endpoint": "tcp://h:502"}, "endpoint"),
        ({"protocol": "opcua", "endpoint": "opc.tcp://h:4840"}, {"security_mode": "Sign"}, "security_policy"),
        (
            {
                "protocol": "opcua",
                "endpoint": "opc.tcp://h:4840",
                "security_mode": "Sign",
                "security_policy": "Basic256Sha256",
                "username": "op",
            },
            {"security_mode": "None", "security_policy": "None"},
            "username",
        ),
    ],
)
def test_connection_edits_are_checked_on_the_edited_connection(
    stored: dict[str, Any], patch: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRegistration) as e:
        check_connection_edit({**STORED_CONNECTION, **stored}, False, ConnectionUpdate.model_validate(patch))
    assert e.value.field == field


def test_stored_columns_become_the_address_the_session_reads() -> None:
    def address(tag: dict[str, Any]) -> str:
        return tag_spec(Protocol.MODBUS, stored_tag(Protocol.MODBUS, tag)).address

    assert address(holding(7)) == "holding:1:7:uint16:ABCD"
    assert (
        address(holding(7, modbus_unit=0, modbus_data_type="bool", modbus_bit=3, byte_order="BADC"))
        == "holding:0:7:bool:BADC:bit=3"
    )
    assert address(holding(7, modbus_data_type="string", modbus_length=8)) == "holding:1:7:string:ABCD:len=8"
    opc = stored_tag(Protocol.OPCUA, {"name": "t", "node_id": "ns=2;s=A"})
    assert tag_spec(Protocol.OPCUA, opc).address == "ns=2;s=A"


# -- (b) property: whatever registration accepts, a session can be built from -------------------
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "scada-ingest-hypothesis")
)
from hypothesis import given, note  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _none_or(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


_modbus_tag = st.fixed_dictionaries(
    {},
    optional={
        "modbus_unit": _none_or(st.integers(0, 255)),
        "modbus_register": _none_or(st.sampled_from(["coil", "discrete", "holding", "input"])),
        "modbus_address": _none_or(
            st.one_of(st.integers(0, 65535), st.sampled_from([0, 65531, 65532, 65533, 65534, 65535]))
        ),
        "modbus_data_type": _none_or(
            st.sampled_from(
                ["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"]
            )
        ),
        "byte_order": _none_or(st.sampled_from(["ABCD", "DCBA", "BADC", "CDAB"])),
        "modbus_bit": _none_or(st.integers(0, 15)),
        "modbus_length": _none_or(st.integers(1, 125)),
        "node_id": st.sampled_from(["ns=2;s=A"]),  # ignored on a Modbus connection
    },
)
_node_id = st.one_of(
    st.sampled_from(BAD_NODE_IDS + GOOD_NODE_IDS + ["b=!!!", "s=", "ns=2;s= x ", "i=-1"]),
    st.builds("ns={};i={}".format, st.integers(0, 70_000), st.integers(-2, 2**33)),
    st.builds("ns={};s={}".format, st.integers(0, 3), st.text(min_size=0, max_size=8)),
    st.builds("{}={}".format, st.sampled_from("isgb"), st.text(min_size=1, max_size=12)),
)
_opcua_tag = st.fixed_dictionaries({}, optional={"node_id": _none_or(_node_id)})
_security = st.sampled_from(
    [
        {},
        {"security_mode": "Sign"},
        {"security_policy": "Basic256Sha256"},
        {"security_mode": "SignAndEncrypt", "security_policy": "Aes256_Sha256_RsaPss"},
        {"security_mode": "Sign", "security_policy": "Basic256Sha256", "username": "op", "password": "pw"},
        {"security_mode": "Sign", "security_policy": "Basic256Sha256", "password": "pw"},
        {"security_mode": "Sign", "security_policy": "Basic256Sha256", "username": ""},
        {"username": "op"},
    ]
)
_connection = st.one_of(
    st.fixed_dictionaries(
        {
            "protocol": st.just("modbus"),
            "endpoint": st.sampled_from(
                [
                    "tcp://127.0.0.1:502",
                    "modbus+tcp://plc/",
                    "tcp://plc:0",
                    "tcp://plc:65536",
                    "tcp://plc:99999",
                    "tcp://p?x",
                    "opc.tcp://plc:4840",
                ]
            ),
            # Mostly good tags, so that the endpoint and security draws reach the session too.
            "tags": st.lists(st.one_of(st.sampled_from(GOOD_MODBUS_TAGS), _modbus_tag), min_size=1, max_size=6),
            "security": _security,
        }
    ),
    st.fixed_dictionaries(
        {
            "protocol": st.just("opcua"),
            "endpoint": st.sampled_from(["opc.tcp://127.0.0.1:4840", "opc.tcp://h:1/never", "tcp://h:4840"]),
            "tags": st.lists(_opcua_tag, max_size=6),
            "security": _security,
        }
    ),
)


def spec_as_stored(c: ConnectionCreate) -> ConnectionSpec:
    """What the coordinator would hand out for this payload once stored (as load_specs builds
    it: tag_spec over the stored columns)."""
    rows = [stored_tag(c.protocol, t.model_dump(), tag_id=i + 1) for i, t in enumerate(c.tags)]
    return ConnectionSpec(
        tenant_id="t",
        tenant_slug="t",
        connection_id="c",
        protocol=c.protocol,
        endpoint=c.endpoint,
        publishing_interval_ms=c.publishing_interval_ms,
        security_mode=SecurityMode(c.security_mode),
        security_policy=SecurityPolicy(c.security_policy),
        username=c.username,
        password=c.password,
        auto_accept_server_cert=c.auto_accept_server_cert,
        tags=tuple(tag_spec(c.protocol, r) for r in rows),
    )


def build_session(spec: ConnectionSpec) -> None:
    def ignore(*_: Any) -> None:
        return None

    session = make_session(spec, ignore, ignore, ignore, ignore)
    assert isinstance(session.stats, dict)


@hsettings(max_examples=400, deadline=None, database=None)  # no .hypothesis/ in the checkout
@given(draw=_connection)
def test_property_every_accepted_payload_builds_a_session(draw: dict[str, Any]) -> None:
    payload = {
        "name": "c",
        "endpoint": draw["endpoint"],
        "protocol": draw["protocol"],
        **draw["security"],
        "tags": [{**t, "name": f"t{i}"} for i, t in enumerate(draw["tags"])],
    }
    try:
        accepted = ConnectionCreate.model_validate(payload)
    except ValidationError as e:
        note(f"refused: {e.errors()[0]['msg']}")
        return
    build_session(spec_as_stored(accepted))


@hsettings(max_examples=300, deadline=None, database=None)
@given(tag=st.sampled_from(GOOD_MODBUS_TAGS), patch=_modbus_tag)
def test_property_every_accepted_tag_edit_builds_a_session(tag: dict[str, Any], patch: dict[str, Any]) -> None:
    patch.pop("node_id", None)
    row = stored_tag(Protocol.MODBUS, tag)
    edit = TagUpdate.model_validate(patch)
    try:
        check_tag_edit(Protocol.MODBUS, row, edit)
    except InvalidRegistration as e:
        note(f"refused: {e}")
        return
    edited = row | edit.model_dump(exclude_unset=True)
    build_session(
        ConnectionSpec(
            "t", "t", "c", Protocol.MODBUS, "tcp://127.0.0.1:502", 1000, tags=(tag_spec(Protocol.MODBUS, edited),)
        )
    )


def test_the_property_sees_both_outcomes() -> None:
    """The generators reach accepted payloads too, not only refusals (else the property is void)."""
    good = [{**MODBUS, "tags": [t]} for t in GOOD_MODBUS_TAGS]
    good += [{**OPCUA, "tags": [{"name": "t", "node_id": n}]} for n in GOOD_NODE_IDS]
    for payload in good:
        build_session(spec_as_stored(ConnectionCreate.model_validate(payload)))


# -- (c) the live API: 422 naming the field, at create and on edit --------------------------------
def created(r: Any) -> Any:
    assert r.status_code == 201, r.text
    return r.json()


def test_api_refuses_bad_modbus_tags_at_create(tenant: TenantHandle) -> None:
    base = f"/v1/tenants/{tenant.slug}/connections"
    conn = created(tenant.client.post(base, json={**MODBUS, "tags": [holding(1)]}))
    for tag, field in BAD_MODBUS_TAGS:
        r = tenant.client.post(base, json={**MODBUS, "name": "other", "tags": [tag]})
        assert r.status_code == 422 and f"tags.0.{field}" in fields_of(r), (tag, r.text)
        r = tenant.client.post(f"{base}/{conn['id']}/tags", json={"tags": [holding(2), tag]})
        assert r.status_code == 422, (tag, r.text)
        assert f"tags.1.{field}" in fields_of(r), r.text
    # Nothing of the refused requests was stored.
    assert [c["name"] for c in tenant.client.get(base).json()] == ["plc"]
    assert [t["name"] for t in tenant.client.get(f"/v1/tenants/{tenant.slug}/tags").json()] == ["h1"]


def test_api_refuses_bad_node_ids_and_endpoints_at_create(tenant: TenantHandle) -> None:
    base = f"/v1/tenants/{tenant.slug}/connections"
    r = tenant.client.post(base, json={**OPCUA, "tags": [{"name": "t", "node_id": "i=abc"}]})
    assert r.status_code == 422 and "tags.0.node_id" in r.text, r.text
    conn = created(tenant.client.post(base, json={**OPCUA, "tags": []}))
    r = tenant.client.post(f"{base}/{conn['id']}/tags", json={"tags": [{"name": "t", "node_id": "ns=70000;i=1"}]})
    assert r.status_code == 422 and "tags.0.node_id" in fields_of(r), r.text
    r = tenant.client.post(
        base, json={**MODBUS, "name": "p2", "endpoint": "tcp://plc:99999", "tags": [holding(1)]}
    )
    assert r.status_code == 422 and "endpoint" in r.text, r.text


def test_api_checks_tag_edits_on_the_edited_tag(tenant: TenantHandle) -> None:
    base = f"/v1/tenants/{tenant.slug}"
    coil = {"name": "c", "modbus_register": "coil", "modbus_address": 3, "modbus_data_type": "bool"}
    text = holding(20, modbus_data_type="string", modbus_length=4)
    real = holding(40, modbus_data_type="float32")
    flag = holding(50, modbus_data_type="bool", modbus_bit=3)
    conn = created(tenant.client.post(f"{base}/connections", json={**MODBUS, "tags": [coil, text, real, flag]}))
    ids = {t["name"]: t["tag_id"] for t in conn["tags"]}
    for name, patch, field in [
        ("c", {"modbus_data_type": "uint16"}, "modbus_data_type"),
        ("h20", {"modbus_length": None}, "modbus_length"),
        ("h40", {"modbus_address": 65535}, "modbus_address"),
        ("h50", {"modbus_data_type": "float32"}, "modbus_bit"),
        ("h40", {"modbus_length": 2}, "modbus_length"),
    ]:
        r = tenant.client.patch(f"{base}/tags/{ids[name]}", json=patch)
        assert r.status_code == 422, (name, patch, r.text)
        assert field in fields_of(r), r.text
    # An edit that leaves a readable tag goes through, in place (same tag_id).
    r = tenant.client.patch(f"{base}/tags/{ids['h40']}", json={"modbus_address": 65534})
    assert r.status_code == 200, r.text
    assert (r.json()["tag_id"], r.json()["modbus_address"]) == (ids["h40"], 65534)
    opc = created(
        tenant.client.post(f"{base}/connections", json={**OPCUA, "tags": [{"name": "t", "node_id": "i=85"}]})
    )
    r = tenant.client.patch(f"{base}/tags/{opc['tags'][0]['tag_id']}", json={"node_id": "i=abc"})
    assert r.status_code == 422 and "node_id" in fields_of(r), r.text


def test_api_checks_connection_edits_on_the_edited_connection(tenant: TenantHandle) -> None:
    base = f"/v1/tenants/{tenant.slug}/connections"
    plc = created(tenant.client.post(base, json={**MODBUS, "tags": [holding(1)]}))
    rtu = created(tenant.client.post(base, json={**OPCUA, "tags": []}))
    for cid, patch, field in [
        (plc["id"], {"endpoint": "opc.tcp://plc:4840"}, "endpoint"),
        (plc["id"], {"endpoint": "tcp://plc:70000"}, "endpoint"),
        (rtu["id"], {"endpoint": "tcp://h:502"}, "endpoint"),
        (rtu["id"], {"security_mode": "Sign"}, "security_policy"),
    ]:
        r = tenant.client.patch(f"{base}/{cid}", json=patch)
        assert r.status_code == 422, (patch, r.text)
        assert field in fields_of(r), r.text
    r = tenant.client.patch(
        f"{base}/{rtu['id']}", json={"security_mode": "Sign", "security_policy": "Basic256Sha256"}
    )
    assert r.status_code == 200 and r.json()["security_mode"] == "Sign", r.text
    r = tenant.client.patch(f"{base}/{plc['id']}", json={"endpoint": "tcp://plc:1502"})
    assert r.status_code == 200 and r.json()["endpoint"] == "tcp://plc:1502", r.text
