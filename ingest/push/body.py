"""Reading a request body within the tenant's size limits, decided before it is held whole.

The declared ``Content-Length`` is checked first; then the body is counted while it streams in,
so a client that lies about (or omits) its length is cut off at the limit, not after it. A gzip
body is inflated chunk by chunk with ``max_length`` capping every step, so a small "gzip bomb"
never expands past the decompressed limit in memory.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

from ingest.push.errors import PayloadInvalid, PayloadTooLarge, UnsupportedEncoding

_MB = 1024 * 1024


def check_declared_length(content_length: str | None, max_bytes: int) -> None:
    if content_length is None:
        return
    try:
        n = int(content_length)
    except ValueError:
        raise PayloadInvalid(
            "Invalid Content-Length", [{"field": "Content-Length", "error": "must be an integer"}]
        ) from None
    if n > max_bytes:
        raise PayloadTooLarge(
            f"request body of {n} bytes is over the {_human(max_bytes)} limit",
            [{"field": "Content-Length", "error": f"at most {max_bytes} bytes"}],
        )


async def read_limited(
    chunks: AsyncIterator[bytes], content_encoding: str | None, max_bytes: int, max_decompressed_bytes: int
) -> tuple[bytes, int]:
    """The (decompressed) body and the number of bytes received on the wire."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise UnsupportedEncoding(
            f"Content-Encoding {encoding!r} is not supported",
            [{"field": "Content-Encoding", "error": "identity or gzip"}],
        )
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding != "identity" else None
    parts: list[bytes] = []
    wire = size = 0
    async for chunk in chunks:
        wire += len(chunk)
        if wire > max_bytes:
            raise PayloadTooLarge(
                f"request body is over the {_human(max_bytes)} limit",
                [{"field": "body", "error": f"at most {max_bytes} bytes"}],
            )
        if inflater is None:
            parts.append(chunk)
            continue
        data = chunk
        while data:
            try:
                out = inflater.decompress(data, max_decompressed_bytes - size + 1)
            except zlib.error as e:
                raise PayloadInvalid("Invalid gzip body", [{"field": "body", "error": f"not gzip: {e}"}]) from None
            size += len(out)
            if size > max_decompressed_bytes:
                raise PayloadTooLarge(
                    f"decompressed body is over the {_human(max_decompressed_bytes)} limit",
                    [{"field": "body", "error": f"decompresses to more than {max_decompressed_bytes} bytes"}],
                )
            parts.append(out)
            data = inflater.unconsumed_tail
            if inflater.eof:
                break
    if inflater is not None and not inflater.eof:
        raise PayloadInvalid("Invalid gzip body", [{"field": "body", "error": "gzip stream is truncated"}])
    return b"".join(parts), wire


def _human(n: int) -> str:
    return f"{n / _MB:g} MB" if n >= _MB else f"{n} bytes"
