"""ingest.core.keys: the secrets and keys the cluster makes for itself (no services)."""

from __future__ import annotations

import stat
from pathlib import Path

from ingest.core.keys import hash_secret, new_api_key, read_or_create_secret, secret_matches, split_api_key


def test_read_or_create_secret(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "secret"
    first = read_or_create_secret(path)
    assert len(first) >= 24 and first.replace("-", "").replace("_", "").isalnum()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_or_create_secret(path) == first
    assert read_or_create_secret(tmp_path / "sub" / "other", nbytes=48) != first
    assert len(read_or_create_secret(tmp_path / "sub" / "other")) == 64


def test_api_key_round_trip_and_hash() -> None:
    key, key_id, digest = new_api_key("sk")
    assert key.startswith(f"sk_{key_id}_")
    kid, secret = split_api_key(key)
    assert kid == key_id and hash_secret(secret) == digest
    assert secret_matches(secret, digest) and not secret_matches(secret + "x", digest)
