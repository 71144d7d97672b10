"""OPC UA security: application certificates, the server trust list, and securing a client.

The PKI folder (``pki_dir``) follows the layout OPC UA tools use:
- ``own/cert.der`` and ``own/key.pem``: this application's certificate and private key, made on
  first use (self-signed, RSA 2048, SHA-256); the key file is mode 0600.
- ``trusted/``: certificates (DER or PEM) of servers we accept, or of CAs that issued them.
- ``rejected/``: where an untrusted server certificate is copied, named ``<CN> [<thumbprint>].der``,
  so an operator can review it and move it to ``trusted/``. The next reconnect picks it up.

A server certificate is accepted when its DER bytes equal a trusted certificate's, or when a
trusted certificate issued it, and the current time is inside its validity period.
``OpcUaSecurity.auto_accept`` (explicit, per connection) skips the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import logging
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import cert_gen, security_policies
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ingest.core.errors import ConfigError
from ingest.core.models import SecurityMode, SecurityPolicy

__all__ = [
    "CLIENT_APPLICATION_URI",
    "DEFAULT_PKI_DIR",
    "OpcUaSecurity",
    "OwnCertificate",
    "PkiStore",
    "configure_client",
    "server_policy_type",
    "thumbprint",
]

_log = logging.getLogger(__name__)


class _NoActivateSessionRecords(logging.Filter):
    """asyncua logs every request it sends at DEBUG, ActivateSession too, and that one carries
    the user token: with SignAndEncrypt the password is in it as plain bytes. Never log it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(a, ua.ActivateSessionRequest) for a in args)


logging.getLogger("asyncua.client.ua_client.UASocketProtocol").addFilter(_NoActivateSessionRecords())

DEFAULT_PKI_DIR = Path(__file__).resolve().parents[2] / ".local" / "pki"
CLIENT_APPLICATION_URI = f"urn:{socket.gethostname()}:scada-ingest:client"
_CERT_DAYS = 730
_RENEW_BEFORE = dt.timedelta(days=30)

_POLICY_CLASS: dict[SecurityPolicy, type[security_policies.SecurityPolicy]] = {
    SecurityPolicy.BASIC256SHA256: security_policies.SecurityPolicyBasic256Sha256,
    SecurityPolicy.AES128_SHA256_RSAOAEP: security_policies.SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicy.AES256_SHA256_RSAPSS: security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_UA_MODE = {
    SecurityMode.NONE: ua.MessageSecurityMode.None_,
    SecurityMode.SIGN: ua.MessageSecurityMode.Sign,
    SecurityMode.SIGN_AND_ENCRYPT: ua.MessageSecurityMode.SignAndEncrypt,
}


@dataclass(frozen=True)
class OpcUaSecurity:
    """How one connection secures its channel and who it logs in as.

    ``mode`` / ``policy``: None/None, or Sign / SignAndEncrypt with one of the three policies.
    Identity: anonymous (default), ``username`` + ``password``, or an X.509 user certificate
    (``user_certificate`` + ``user_private_key``, DER or PEM files). A password is only sent
    over a signed or encrypted channel. ``auto_accept`` trusts any server certificate.
    """

    mode: SecurityMode = SecurityMode.NONE
    policy: SecurityPolicy = SecurityPolicy.NONE
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    user_certificate: Path | None = None
    user_private_key: Path | None = None
    auto_accept: bool = False

    def __post_init__(self) -> None:
        mode, policy = SecurityMode(self.mode), SecurityPolicy(self.policy)
        object.__setattr__(self, "mode", mode)  # "SignAndEncrypt" given as text becomes the enum
        object.__setattr__(self, "policy", policy)
        if (mode is SecurityMode.NONE) != (policy is SecurityPolicy.NONE):
            raise ConfigError(f"security mode {mode} needs a matching policy (None goes with None), got {policy}")
        if self.username is not None:
            if not self.username:
                raise ConfigError("username must not be empty")
            if mode is SecurityMode.NONE:
                # The password would cross the wire readable; refuse rather than warn.
                raise ConfigError("username/password needs security mode Sign or SignAndEncrypt")
            if self.user_certificate is not None:
                raise ConfigError("choose one identity: username/password or a user certificate")
        elif self.password is not None:
            raise ConfigError("a password needs a username")
        if (self.user_certificate is None) != (self.user_private_key is None):
            raise ConfigError("a user certificate needs its private key (and vice versa)")
        if self.user_certificate is not None and mode is SecurityMode.NONE:
            # Its signature covers the server certificate, which a None channel does not carry.
            raise ConfigError("a user certificate needs security mode Sign or SignAndEncrypt")


@dataclass(frozen=True)
class OwnCertificate:
    cert_path: Path
    key_path: Path
    application_uri: str


def thumbprint(der: bytes) -> str:
    """The SHA-1 thumbprint OPC UA tools show for a certificate (upper-case hex)."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else "unnamed"


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        data = path.read_bytes()
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (OSError, ValueError) as exc:
        _log.warning("pki: cannot read certificate %s: %s", path, exc)
        return None


class PkiStore:
    """One PKI folder: own certificate, trusted and rejected certificates."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.own_dir = self.root / "own"
        self.trusted_dir = self.root / "trusted"
        self.rejected_dir = self.root / "rejected"

    def ensure_dirs(self) -> None:
        for d in (self.root, self.own_dir, self.trusted_dir, self.rejected_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    # --- own certificate ------------------------------------------------------------------

    def own_certificate(self, application_uri: str, *, server: bool = False) -> OwnCertificate:
        """This application's certificate and key, made (or renewed) if missing or unusable.

        Blocking (file I/O, RSA key generation): call it in a thread. A file lock keeps two
        processes sharing the folder from writing a key and a certificate that do not match.
        """
        self.ensure_dirs()
        cert_path, key_path = self.own_dir / "cert.der", self.own_dir / "key.pem"
        with open(self.own_dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            key = self._load_or_make_key(key_path)
            cert = _load_cert(cert_path) if cert_path.exists() else None
            if cert is None or not self._usable(cert, key, application_uri):
                cert = self._make_cert(key, application_uri, server=server)
                _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.DER), 0o644)
                _log.info(
                    "pki: made certificate %s for %s (thumbprint %s)",
                    cert_path,
                    application_uri,
                    thumbprint(cert.public_bytes(serialization.Encoding.DER)),
                )
        return OwnCertificate(cert_path, key_path, application_uri)

    @staticmethod
    def _load_or_make_key(key_path: Path) -> rsa.RSAPrivateKey:
        if key_path.exists():
            os.chmod(key_path, 0o600)  # whatever put it there, it stays private
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if isinstance(key, rsa.RSAPrivateKey):
                return key
            _log.warning("pki: %s is not an RSA key; making a new one", key_path)
        key = cert_gen.generate_private_key()
        _write_atomic(key_path, cert_gen.dump_private_key_as_pem(key), 0o600)
        return key

    @staticmethod
    def _usable(cert: x509.Certificate, key: rsa.RSAPrivateKey, application_uri: str) -> bool:
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc - _RENEW_BEFORE:
            return False
        if cert.public_key() != key.public_key():
            return False
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        return application_uri in san.get_values_for_type(x509.UniformResourceIdentifier)

    @staticmethod
    def _make_cert(key: rsa.RSAPrivateKey, application_uri: str, *, server: bool) -> x509.Certificate:
        host = socket.gethostname()
        names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(application_uri),
            x509.DNSName(host),
        ]
        if server:
            names += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usage.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        return cert_gen.generate_self_signed_app_certificate(
            key,
            "scada-ingest simulator" if server else "scada-ingest",
            {"organizationName": "scada-ingest"},
            names,
            extended=usage,
            days=_CERT_DAYS,
        )

    # --- trust list -----------------------------------------------------------------------

    def is_trusted(self, cert: x509.Certificate) -> bool:
        der = cert.public_bytes(serialization.Encoding.DER)
        if not self.trusted_dir.is_dir():
            return False
        for path in sorted(self.trusted_dir.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            trusted = _load_cert(path)
            if trusted is None:
                continue
            if trusted.public_bytes(serialization.Encoding.DER) == der:
                return True
            if trusted.subject == cert.issuer and trusted.subject != cert.subject:
                with contextlib.suppress(ValueError, TypeError, Exception):
                    cert.verify_directly_issued_by(trusted)
                    return True
        return False

    def reject(self, cert: x509.Certificate) -> Path:
        """Copy ``cert`` into ``rejected/`` (once) and return its path."""
        self.ensure_dirs()
        der = cert.public_bytes(serialization.Encoding.DER)
        safe = re.sub(r"[^A-Za-z0-9 ._-]+", "_", _common_name(cert)).strip() or "unnamed"
        path = self.rejected_dir / f"{safe} [{thumbprint(der)}].der"
        if not path.exists():
            _write_atomic(path, der, 0o644)
        return path

    def check_server_certificate(self, der: bytes, endpoint: str) -> None:
        """Raise ConfigError (and keep a copy in ``rejected/``) unless ``der`` is trusted."""
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise ConfigError(f"{endpoint}: server sent an unreadable certificate: {exc}") from exc
        thumb = thumbprint(der)
        if not self.is_trusted(cert):
            path = self.reject(cert)
            raise ConfigError(
                f"{endpoint}: server certificate CN={_common_name(cert)!r} "
                f"(SHA-1 thumbprint {thumb}) is not trusted; a copy is in {path}: move it to "
                f"{self.trusted_dir} to trust it, or mark the connection auto_accept"
            )
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ConfigError(
                f"{endpoint}: server certificate (SHA-1 thumbprint {thumb}) is outside its "
                f"validity period {cert.not_valid_before_utc:%Y-%m-%d} .. "
                f"{cert.not_valid_after_utc:%Y-%m-%d}"
            )


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def server_policy_type(mode: SecurityMode, policy: SecurityPolicy) -> ua.SecurityPolicyType:
    """The asyncua server endpoint type for a (mode, policy) pair."""
    mode, policy = SecurityMode(mode), SecurityPolicy(policy)
    if mode is SecurityMode.NONE or policy is SecurityPolicy.NONE:
        if mode is not SecurityMode.NONE or policy is not SecurityPolicy.NONE:
            raise ConfigError(f"security mode {mode} does not go with policy {policy}")
        return ua.SecurityPolicyType.NoSecurity
    prefix = {
        SecurityPolicy.BASIC256SHA256: "Basic256Sha256",
        SecurityPolicy.AES128_SHA256_RSAOAEP: "Aes128Sha256RsaOaep",
        SecurityPolicy.AES256_SHA256_RSAPSS: "Aes256Sha256RsaPss",
    }[policy]
    return getattr(ua.SecurityPolicyType, f"{prefix}_{mode.value}")  # type: ignore[no-any-return]


def _first_cert(der: bytes) -> bytes:
    # A server may send its certificate followed by its chain; the first DER SEQUENCE is its own.
    if len(der) > 4 and der[0] == 0x30 and der[1] == 0x82:
        return der[: int.from_bytes(der[2:4], "big") + 4]
    return der


async def configure_client(client: Client, security: OpcUaSecurity, pki: PkiStore, endpoint: str) -> None:
    """Set up ``client`` for one connection attempt; raises ConfigError on trust problems.

    For Sign / SignAndEncrypt this asks the server for its endpoints over an unsecured
    channel (GetEndpoints is allowed there), checks the certificate of the matching endpoint
    against the trust list, and builds the channel on exactly that certificate: a server that
    later presents another one is refused by asyncua ("Server certificate mismatch").
    """
    client.application_uri = CLIENT_APPLICATION_URI
    if security.user_certificate is not None and security.user_private_key is not None:
        await client.load_client_certificate(str(security.user_certificate))
        await client.load_private_key(security.user_private_key)
    none = security_policies.SecurityPolicyNone()  # type: ignore[no-untyped-call]
    client.security_policy = none
    client.uaclient.set_security(none)
    if security.mode is SecurityMode.NONE:
        return
    ua_mode = _UA_MODE[security.mode]
    policy_cls = _POLICY_CLASS[security.policy]
    endpoints = await client.connect_and_get_server_endpoints()
    match = [ep for ep in endpoints if ep.SecurityMode == ua_mode and ep.SecurityPolicyUri == policy_cls.URI]
    if not match:
        offered = sorted({f"{ep.SecurityMode.name}/{ep.SecurityPolicyUri.rsplit('#', 1)[-1]}" for ep in endpoints})
        raise ConfigError(
            f"{endpoint}: server offers no {security.mode}/{security.policy} endpoint "
            f"(offers {', '.join(offered) or 'nothing'})"
        )
    server_der = _first_cert(match[0].ServerCertificate or b"")
    if not server_der:
        raise ConfigError(f"{endpoint}: server has no certificate on its secure endpoint")
    if security.auto_accept:
        _log.info(
            "opcua %s: auto-accepting server certificate (SHA-1 thumbprint %s)",
            endpoint,
            thumbprint(server_der),
        )
    else:
        await asyncio.to_thread(pki.check_server_certificate, server_der, endpoint)
    own = await asyncio.to_thread(pki.own_certificate, CLIENT_APPLICATION_URI)
    await client.set_security(
        policy_cls,
        str(own.cert_path),
        str(own.key_path),
        server_certificate=server_der,
        mode=ua_mode,
    )
