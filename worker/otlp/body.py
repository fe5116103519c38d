from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

from worker.otlp import DEFAULT_MAX_BODY_BYTES
from worker.otlp.decode import MalformedPayload

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ENCODINGS", "TooLarge", "read_body"]
ENCODINGS = ("identity", "gzip", "deflate")
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class TooLarge(ValueError):
    """The body, as sent or once decompressed, exceeds the limit (HTTP 413)."""


async def read_body(chunks: AsyncIterator[bytes], encoding: str, limit: int) -> bytes:
    """The request body, decompressed, never holding more than limit (+ one chunk) bytes.

    Both the bytes received and the bytes they decompress to are counted, so neither a huge
    upload nor a small gzip bomb is buffered before the answer is 413.
    """
    received = 0
    parts: list[bytes] = []
    size = 0
    inflater = _Inflater(limit, _WBITS[encoding]) if encoding in _WBITS else None
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise TooLarge(f"the request body exceeds {limit} bytes")
        data = inflater.feed(chunk) if inflater is not None else chunk
        size += len(data)
        if size > limit:
            raise TooLarge(f"the decompressed request body exceeds {limit} bytes")
        parts.append(data)
    if inflater is not None:
        inflater.finish()
    return b"".join(parts)


class _Inflater:
    def __init__(self, limit: int, wbits: int) -> None:
        self.limit = limit
        self.wbits = wbits
        self.inflater = zlib.decompressobj(wbits)
        self.member_started = False

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        produced = 0
        data = chunk
        while data:
            self.member_started = True
            try:
                # max_length stops a bomb after limit + 1 bytes; the caller then answers 413.
                piece = self.inflater.decompress(data, self.limit + 1 - produced)
            except zlib.error as exc:
                raise MalformedPayload(f"the compressed body is corrupt: {exc}") from None
            out.append(piece)
            produced += len(piece)
            if produced > self.limit:
                break
            if self.inflater.eof:
                # A gzip stream may hold several members, one after another.
                data = self.inflater.unused_data
                self.inflater = zlib.decompressobj(self.wbits)
                self.member_started = False
            else:
                data = self.inflater.unconsumed_tail
        return b"".join(out)

    def finish(self) -> None:
        if self.member_started and not self.inflater.eof:
            raise MalformedPayload("the compressed body is truncated")
