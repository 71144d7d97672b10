"""Keys the cluster makes for itself: the master key, API keys (format and hash), and the secret
files of the local stack. Settings fill empty secrets from here, so this sits in core, below the
stores and the local stack that use it."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet

from ingest.core.errors import LocalStackError


def new_master_key() -> str:
    return Fernet.generate_key().decode()


def new_api_key(prefix: str) -> tuple[str, str, str]:
    """Return (full key shown once, public key id, sha256 hex of the secret part)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    return f"{prefix}_{key_id}_{secret}", key_id, hash_secret(secret)


def split_api_key(key: str) -> tuple[str, str]:
    """Split ``<prefix>_<key_id>_<secret>`` into (key_id, secret); ValueError when malformed."""
    parts = key.split("_", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ValueError("malformed API key")
    return parts[1], parts[2]


def hash_secret(secret: str) -> str:
    # API keys carry 192 random bits, so a fast hash is enough (no dictionary to attack).
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def read_or_create_secret(path: Path, nbytes: int = 24) -> str:
    """Return the secret stored in ``path``; create it first (URL-safe token, file mode 0600,
    parent created with mode 0700) when missing. Safe against concurrent callers."""
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = None
    if existing is None:
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
            os.chmod(path.parent, 0o700)
        token = secrets.token_urlsafe(nbytes)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (token + "\n").encode())
            os.fsync(fd)
            os.close(fd)
            fd = -1
            try:
                os.link(tmp, path)  # atomic; fails if another caller won the race
                return token
            except FileExistsError:
                pass
        finally:
            if fd >= 0:
                os.close(fd)
            Path(tmp).unlink(missing_ok=True)
        existing = path.read_text().strip()
    if not existing:
        raise LocalStackError(f"secret file {path} is empty")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, 0o600)
    return existing
