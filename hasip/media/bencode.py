"""Bencode (BEP 3), the encoding of rtpengine's ng control protocol:
integers ``i42e``, byte strings ``4:spam``, lists ``l...e`` and dictionaries
``d...e`` with byte-string keys. Sans-IO and strict: anything malformed,
truncated, nested too deep or with trailing bytes raises
:class:`BencodeError`, never anything else.

Strings decode to ``bytes``; the ng layer decides which are text. rtpengine
does not sort its dictionary keys, so the decoder accepts any order (and
keeps the last of a repeated key); the encoder sorts them, as BEP 3 says.
"""

from __future__ import annotations

from typing import TypeAlias

Decoded: TypeAlias = "int | bytes | list[Decoded] | dict[bytes, Decoded]"

MAX_DEPTH = 32


class BencodeError(ValueError):
    pass


def encode(value: object) -> bytes:
    """``value`` (int, str, bytes, list, tuple, dict with str/bytes keys)
    as bencode; str is UTF-8; bool is refused (it would pass for an int)."""
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value: object, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BencodeError("nested too deep")
    if isinstance(value, bool):
        raise BencodeError("a boolean has no bencode form (use 0/1 or a flag)")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, bytes):
        out.append(b"%d:" % len(value))
        out.append(value)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, (list, tuple)):
        out.append(b"l")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, dict):
        items: dict[bytes, object] = {}
        for key, item in value.items():
            if isinstance(key, str):
                key = key.encode("utf-8")
            if not isinstance(key, bytes):
                raise BencodeError(f"dictionary key {key!r} is not a string")
            items[key] = item
        out.append(b"d")
        for key in sorted(items):
            out.append(b"%d:" % len(key))
            out.append(key)
            _encode(items[key], out, depth + 1)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot encode {type(value).__name__}")


def decode(data: bytes) -> Decoded:
    """The one value ``data`` holds (nothing may follow it)."""
    value, end = decode_prefix(data, 0)
    if end != len(data):
        raise BencodeError(f"{len(data) - end} byte(s) after the value")
    return value


def decode_prefix(data: bytes, pos: int) -> tuple[Decoded, int]:
    """The value starting at ``pos`` and where it ends."""
    return _decode(data, pos, 0)


def _digits(data: bytes, pos: int, end: int) -> int:
    text = data[pos:end]
    if not text:
        raise BencodeError(f"empty number at {pos}")
    negative = text[:1] == b"-"
    body = text[1:] if negative else text
    if not body.isdigit() or not body.isascii():
        raise BencodeError(f"bad number {text[:20]!r} at {pos}")
    if (body[:1] == b"0" and len(body) > 1) or (negative and body == b"0"):
        raise BencodeError(f"non-canonical number {text[:20]!r} at {pos}")
    if len(body) > 20:
        raise BencodeError(f"number too long at {pos}")
    return -int(body) if negative else int(body)


def _decode(data: bytes, pos: int, depth: int) -> tuple[Decoded, int]:
    if depth > MAX_DEPTH:
        raise BencodeError("nested too deep")
    if pos >= len(data):
        raise BencodeError("truncated")
    lead = data[pos]
    if lead == 0x69:                                  # i
        end = data.find(b"e", pos + 1)
        if end < 0:
            raise BencodeError("truncated integer")
        return _digits(data, pos + 1, end), end + 1
    if 0x30 <= lead <= 0x39:                          # 0-9: a string
        colon = data.find(b":", pos)
        if colon < 0:
            raise BencodeError("truncated string length")
        digits = data[pos:colon]
        # the common case in one step; anything odd gets _digits' verdict
        if digits.isdigit() and (lead != 0x30 or colon == pos + 1) and colon - pos <= 20:
            length = int(digits)
        else:
            length = _digits(data, pos, colon)
        start = colon + 1
        if length < 0 or start + length > len(data):
            raise BencodeError(f"string of {length} bytes at {pos} runs past the end")
        return data[start:start + length], start + length
    if lead == 0x6C:                                  # l
        items: list[Decoded] = []
        pos += 1
        while True:
            if pos >= len(data):
                raise BencodeError("truncated list")
            if data[pos] == 0x65:
                return items, pos + 1
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
    if lead == 0x64:                                  # d
        result: dict[bytes, Decoded] = {}
        pos += 1
        while True:
            if pos >= len(data):
                raise BencodeError("truncated dictionary")
            if data[pos] == 0x65:
                return result, pos + 1
            key, pos = _decode(data, pos, depth + 1)
            if not isinstance(key, bytes):
                raise BencodeError(f"dictionary key at {pos} is not a string")
            result[key], pos = _decode(data, pos, depth + 1)
    raise BencodeError(f"unexpected byte {data[pos:pos + 1]!r} at {pos}")
