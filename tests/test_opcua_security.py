"""OPC UA security: our session against the real asyncua simulator with secure endpoints.

What a user cares about: values arrive over Sign and SignAndEncrypt with each policy; a server
whose certificate is not in the trust list is refused with its thumbprint named and a copy in
rejected/ (and trusted once the operator moves it); auto_accept is explicit; a wrong password is
refused and never written to a log; the client's key stays private.
Timeouts below only keep a broken build from hanging; nothing asserts on speed.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from ingest.core.errors import ConfigError
from ingest.core.models import SecurityMode, SecurityPolicy
from ingest.core.net import free_port
from ingest.device.opcua import OpcUaSecurity, OpcUaSession, OpcUaTag
from ingest.device.opcua_security import thumbprint
from ingest.simulators import OpcUaSimulator
from tests.test_opcua import Collector, tags_of, wait_until

SE = SecurityMode.SIGN_AND_ENCRYPT
POLICIES = [
    SecurityPolicy.BASIC256SHA256,
    SecurityPolicy.AES128_SHA256_RSAOAEP,
    SecurityPolicy.AES256_SHA256_RSAPSS,
]
PASSWORD = "c0rrect-h0rse-battery"


@pytest.fixture(scope="module")
def pki_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pki")


@pytest.fixture(scope="module")
async def sim(pki_root: Path) -> AsyncIterator[OpcUaSimulator]:
    """Every secure endpoint, anonymous allowed."""
    s = OpcUaSimulator(
        port=free_port(),
        wells=1,
        tags_per_well=3,
        interval_ms=50,
        security=[(SE, p) for p in POLICIES] + [(SecurityMode.SIGN, SecurityPolicy.BASIC256SHA256)],
        pki_dir=pki_root / "sim",
    )
    await s.start()
    yield s
    await s.stop()


@pytest.fixture(scope="module")
async def sim_with_users(pki_root: Path, sim: OpcUaSimulator) -> AsyncIterator[OpcUaSimulator]:
    """Same certificate (same pki folder), but logins need a user name and password."""
    s = OpcUaSimulator(
        port=free_port(),
        wells=1,
        tags_per_well=2,
        interval_ms=50,
        security=[(SE, SecurityPolicy.BASIC256SHA256)],
        pki_dir=pki_root / "sim",
        users={"operator": PASSWORD},
    )
    await s.start()
    yield s
    await s.stop()


@pytest.fixture(scope="module")
def trusting_pki(pki_root: Path, sim: OpcUaSimulator) -> Path:
    """A client pki folder whose trust list holds the simulator's certificate."""
    pki = pki_root / "client"
    (pki / "trusted").mkdir(parents=True)
    shutil.copy(sim.certificate_path, pki / "trusted" / "simulator.der")
    return pki


async def run_until(session: OpcUaSession, pred: object, what: str, limit_s: float = 45.0) -> None:
    runner = asyncio.create_task(session.run())
    try:
        await wait_until(pred, what, limit_s)  # type: ignore[arg-type]
    finally:
        await session.stop()
        await runner


async def first_error(
    sim: OpcUaSimulator,
    tags: list[OpcUaTag],
    got: Collector,
    security: OpcUaSecurity,
    pki: Path,
) -> list[str]:
    errors: list[str] = []
    session = OpcUaSession(
        sim.endpoint,
        tags,
        got,
        security=security,
        pki_dir=pki,
        on_state=lambda s, e: errors.append(e) if e else None,
    )
    await run_until(session, lambda: bool(errors), "the refusal")
    return errors


@pytest.mark.parametrize("policy", POLICIES)
async def test_sign_and_encrypt_delivers_with_each_policy(
    sim: OpcUaSimulator, trusting_pki: Path, policy: SecurityPolicy
) -> None:
    tags = tags_of(sim)
    got = Collector()
    states: list[tuple[str, str | None]] = []
    session = OpcUaSession(
        sim.endpoint,
        tags,
        got,
        security=OpcUaSecurity(SE, policy),
        pki_dir=trusting_pki,
        on_state=lambda s, e: states.append((s, e)),
    )
    await run_until(session, lambda: all(len(got.good(t.tag_id)) >= 3 for t in tags), "3 values per tag")
    assert ("connected", None) in states
    assert session.stats["last_error"] is None
    # The client made its own certificate on first use; its key is readable by us only.
    key = trusting_pki / "own" / "key.pem"
    assert (trusting_pki / "own" / "cert.der").is_file()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


async def test_sign_mode_delivers(sim: OpcUaSimulator, trusting_pki: Path) -> None:
    tags = tags_of(sim)
    got = Collector()
    session = OpcUaSession(
        sim.endpoint,
        tags,
        got,
        security=OpcUaSecurity(SecurityMode.SIGN, SecurityPolicy.BASIC256SHA256),
        pki_dir=trusting_pki,
    )
    await run_until(session, lambda: all(len(got.good(t.tag_id)) >= 3 for t in tags), "values")
    assert session.stats["last_error"] is None


async def test_untrusted_server_is_refused_until_the_operator_trusts_it(
    sim: OpcUaSimulator, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    tags = tags_of(sim)
    got = Collector()
    errors: list[str] = []
    session = OpcUaSession(
        sim.endpoint,
        tags,
        got,
        security=OpcUaSecurity(SE, SecurityPolicy.BASIC256SHA256),
        pki_dir=pki,
        reconnect_initial_s=0.2,
        reconnect_max_s=0.5,
        on_state=lambda s, e: errors.append(e) if e else None,
    )
    thumb = thumbprint(sim.certificate_path.read_bytes())
    runner = asyncio.create_task(session.run())
    try:
        await wait_until(lambda: bool(errors), "the refusal")
        assert "ConfigError" in errors[0] and thumb in errors[0] and "not trusted" in errors[0]
        assert got.total() == 0 and session.stats["values_received"] == 0
        rejected = list((pki / "rejected").iterdir())
        assert [p.name for p in rejected] == [f"scada-ingest simulator [{thumb}].der"]
        assert rejected[0].read_bytes() == sim.certificate_path.read_bytes()
        # The operator reviews it and moves it to trusted/: the next reconnect goes through.
        rejected[0].rename(pki / "trusted" / rejected[0].name)
        await wait_until(lambda: all(got.good(t.tag_id) for t in tags), "values once trusted")
    finally:
        await session.stop()
        await runner


async def test_auto_accept_skips_the_trust_list(sim: OpcUaSimulator, tmp_path: Path) -> None:
    tags = tags_of(sim)
    got = Collector()
    session = OpcUaSession(
        sim.endpoint,
        tags,
        got,
        security=OpcUaSecurity(SE, SecurityPolicy.AES256_SHA256_RSAPSS, auto_accept=True),
        pki_dir=tmp_path / "pki",
    )
    await run_until(session, lambda: all(got.good(t.tag_id) for t in tags), "values")
    assert not any((tmp_path / "pki" / "rejected").iterdir())


async def test_username_password_accepted_and_wrong_password_refused(
    sim_with_users: OpcUaSimulator, trusting_pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = sim_with_users
    tags = tags_of(sim)
    got = Collector()
    ok = OpcUaSession(
        sim.endpoint,
        tags,
        got,
        security=OpcUaSecurity(SE, SecurityPolicy.BASIC256SHA256, username="operator", password=PASSWORD),
        pki_dir=trusting_pki,
    )
    await run_until(ok, lambda: all(got.good(t.tag_id) for t in tags), "values as operator")

    for security in (
        OpcUaSecurity(SE, SecurityPolicy.BASIC256SHA256, username="operator", password="wrong-pw"),
        OpcUaSecurity(SE, SecurityPolicy.BASIC256SHA256),  # anonymous: refused here
    ):
        refused = Collector()
        errors = await first_error(sim, tags, refused, security, trusting_pki)
        assert "refused the identity" in errors[0], errors[0]
        assert refused.total() == 0
        assert "wrong-pw" not in errors[0]
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("asyncua.server"))
    assert PASSWORD not in logged and "wrong-pw" not in logged
    assert PASSWORD not in repr(
        OpcUaSecurity(SE, SecurityPolicy.BASIC256SHA256, username="operator", password=PASSWORD)
    )


async def test_x509_user_identity(sim: OpcUaSimulator, trusting_pki: Path, tmp_path: Path) -> None:
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        "operator",
        {},
        [x509.UniformResourceIdentifier("urn:operator")],
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    cert_path, key_path = tmp_path / "user.der", tmp_path / "user.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    tags = tags_of(sim)
    got = Collector()
    session = OpcUaSession(
        sim.endpoint,
        tags,
        got,
        security=OpcUaSecurity(
            SE,
            SecurityPolicy.AES128_SHA256_RSAOAEP,
            user_certificate=cert_path,
            user_private_key=key_path,
        ),
        pki_dir=trusting_pki,
    )
    await run_until(session, lambda: all(got.good(t.tag_id) for t in tags), "values")
    assert session.stats["last_error"] is None


def test_security_settings_are_checked_up_front() -> None:
    with pytest.raises(ConfigError, match="Sign or SignAndEncrypt"):
        OpcUaSecurity(username="u", password="p")  # would send the password in clear
    with pytest.raises(ConfigError, match="matching policy"):
        OpcUaSecurity(SE, SecurityPolicy.NONE)
    with pytest.raises(ConfigError, match="private key"):
        OpcUaSecurity(SE, SecurityPolicy.BASIC256SHA256, user_certificate=Path("c.der"))
