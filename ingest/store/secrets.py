"""Secrets at rest: device and tenant-database passwords are stored encrypted (Fernet, AES-128-CBC
with HMAC-SHA256); API keys are stored as SHA-256 hashes only (their format and hash live in
ingest.core.keys, which settings use too). Nothing here logs a secret."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

from ingest.core.errors import SecretError


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
