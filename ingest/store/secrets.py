"""Secrets at rest: device and tenant-database passwords are stored encrypted (Fernet, AES-128-CBC
with HMAC-SHA256); API keys are stored as SHA-256 hashes only. Nothing here logs a secret."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken

from ingest.core.errors import SecretError


def new_master_key() -> str:
    return Fernet.generate_key().decode()


class SecretBox:
    """Encrypts and decrypts short secrets with the cluster's master key."""

    def __init__(self, master_key: str) -> None:
        self._fernet = Fernet(master_key.encode())

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken as e:
            raise SecretError("secret cannot be decrypted with this master key") from e

    def __repr__(self) -> str:  # never show the key
        return "SecretBox(<hidden>)"


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
