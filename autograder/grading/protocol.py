"""The wire protocol between the harness and the sandboxed worker: plain data, sizes capped.

A frame is ``[4-byte big-endian header length][header: UTF-8 JSON][blob 0][blob 1]...``; the
header lists the blobs' lengths under ``"blobs"``. A value travels as a JSON tree in which a few
tagged objects stand for what JSON cannot say:

======================================  ===========================================
``{"$tuple": [...]}``                   a tuple (lists stay JSON lists)
``{"$dict": [[key, value], ...]}``      a dict with string keys
``{"$tensor": [dtype, shape, blob]}``   a tensor: raw little-endian bytes in a blob
``{"$dtype": "float64"}``               a ``torch.dtype``
``{"$device": "cuda:0"}``               a ``torch.device``
``{"$handle": [id, path, type]}``       an object that stays in the worker
======================================  ===========================================

Decoding is strict and builds fresh objects of exact types: a ``torch.Tensor`` (never a
subclass) from bytes, ``float``/``int``/``str`` from JSON. Anything malformed, oversized or
nested too deep raises :class:`ProtocolError`. There is no pickle and no ``eval``.

This module is copied into the worker's sandbox and imported there too (stdlib and torch only:
it must not import the ``autograder`` package, which the sandbox cannot see).
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from collections.abc import Callable
from typing import Any

MAX_HEADER_BYTES = 4 << 20  # JSON part of one frame
MAX_BLOB_BYTES = 128 << 20  # all tensors of one frame together
MAX_BLOBS = 256
MAX_DEPTH = 32
MAX_STRING = 100_000  # characters of one string
MAX_ITEMS = 1_000_000  # JSON values of one frame
DTYPES = (
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
)
_LENGTH = struct.Struct(">I")


class ProtocolError(Exception):
    """A frame that is not well-formed data of the protocol (or too large)."""


class ChannelClosed(ProtocolError):
    """The other end closed the channel (the process ended)."""


class ChannelTimeout(ProtocolError):
    """No complete frame arrived before the deadline."""


# ---------------------------------------------------------------------------------------------
# Frames


def write_frame(
    fd: int,
    header: dict[str, Any],
    blobs: list[bytes] = (),  # type: ignore[assignment]
    deadline: float | None = None,
) -> None:
    """Send ``header`` (JSON-able) and ``blobs`` as one frame on ``fd``.

    With a ``deadline`` (``time.monotonic()``), ``fd`` must be non-blocking: a reader that
    stops reading cannot hold the writer past it (:class:`ChannelTimeout`).
    """
    header = dict(header, blobs=[len(b) for b in blobs])
    text = json.dumps(header, allow_nan=True, separators=(",", ":")).encode()
    data = b"".join([_LENGTH.pack(len(text)), text, *blobs])
    view = memoryview(data)
    while view:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([], [fd], [], wait)[1]:
                raise ChannelTimeout("the other end stopped reading")
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            continue


def read_frame(fd: int, deadline: float | None = None) -> tuple[dict[str, Any], list[bytes]]:
    """One frame from ``fd``: its header and its blobs; ``deadline`` is ``time.monotonic()``."""
    (length,) = _LENGTH.unpack(_read_exactly(fd, _LENGTH.size, deadline))
    if length > MAX_HEADER_BYTES:
        raise ProtocolError(f"frame header of {length} bytes (limit {MAX_HEADER_BYTES})")
    try:
        header = json.loads(_read_exactly(fd, length, deadline))
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"frame header is not JSON ({exc.__class__.__name__})") from None
    if type(header) is not dict:
        raise ProtocolError("frame header is not a JSON object")
    sizes = header.get("blobs", [])
    if (
        type(sizes) is not list
        or len(sizes) > MAX_BLOBS
        or any(type(n) is not int or n < 0 for n in sizes)
        or sum(sizes) > MAX_BLOB_BYTES
    ):
        raise ProtocolError("frame announces malformed or oversized tensor data")
    return header, [_read_exactly(fd, n, deadline) for n in sizes]


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    while size:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise ChannelTimeout("no answer before the deadline")
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise ChannelClosed("the channel was closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------
# Values


def encode(value: Any, blobs: list[bytes], handle: Callable[[Any], Any] | None = None) -> Any:
    """``value`` as a JSON tree, tensors appended to ``blobs``.

    ``handle(obj)`` turns what is not data into a ``{"$handle": ...}`` node (the worker keeps
    the object); without it such a value is a :class:`ProtocolError`.
    """
    return _encode(value, blobs, handle, 0)


def _encode(value: Any, blobs: list[bytes], handle: Callable | None, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ProtocolError("value nested too deep")
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    import torch

    if isinstance(value, torch.Tensor):
        return {"$tensor": _tensor_bytes(value, blobs)}
    if kind is torch.dtype:
        return {"$dtype": str(value).removeprefix("torch.")}
    if kind is torch.device:
        return {"$device": str(value)}
    if kind is tuple:
        return {"$tuple": [_encode(v, blobs, handle, depth + 1) for v in value]}
    if kind is list:
        return [_encode(v, blobs, handle, depth + 1) for v in value]
    if kind is dict and all(type(k) is str for k in value):
        return {"$dict": [[k, _encode(v, blobs, handle, depth + 1)] for k, v in value.items()]}
    if handle is not None:
        return handle(value)
    raise ProtocolError(f"cannot send a {kind.__name__} as data")


def _tensor_bytes(tensor: Any, blobs: list[bytes]) -> list[Any]:
    import torch

    plain = torch.Tensor.detach(tensor).to("cpu").contiguous()
    dtype = str(plain.dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise ProtocolError(f"tensors of dtype {dtype} are not supported")
    shape = list(plain.shape)
    if plain.dtype == torch.bfloat16:
        plain = plain.view(torch.int16)
    data = plain.numpy().tobytes() if plain.numel() else b""
    blobs.append(data)
    return [dtype, shape, len(blobs) - 1]


def decode(
    tree: Any,
    blobs: list[bytes],
    handle: Callable[[int, tuple[str | int, ...], str], Any],
    *,
    device: Any = None,
) -> Any:
    """The value that ``tree`` encodes, built from fresh objects of exact types.

    ``handle(id, path, type_name)`` builds what a ``$handle`` node stands for; tensors land on
    ``device`` (default CPU). Raises :class:`ProtocolError` on anything malformed.
    """
    budget = [MAX_ITEMS]
    return _decode(tree, blobs, handle, device, 0, budget)


def _decode(tree: Any, blobs: list[bytes], handle: Callable, device: Any, depth: int, budget):
    budget[0] -= 1
    if depth > MAX_DEPTH or budget[0] < 0:
        raise ProtocolError("value nested too deep or too large")
    kind = type(tree)
    if tree is None or kind in (bool, int, float):
        return tree
    if kind is str:
        if len(tree) > MAX_STRING:
            raise ProtocolError(f"string of {len(tree)} characters (limit {MAX_STRING})")
        return tree
    if kind is list:
        return [_decode(v, blobs, handle, device, depth + 1, budget) for v in tree]
    if kind is not dict or len(tree) != 1:
        raise ProtocolError(f"unexpected {kind.__name__} in a value")
    ((tag, body),) = tree.items()
    if tag == "$tuple" and type(body) is list:
        return tuple(_decode(v, blobs, handle, device, depth + 1, budget) for v in body)
    if tag == "$dict" and type(body) is list:
        out = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str:
                raise ProtocolError("malformed dict entry")
            out[pair[0]] = _decode(pair[1], blobs, handle, device, depth + 1, budget)
        return out
    if tag == "$tensor":
        return _tensor(body, blobs, device)
    if tag == "$dtype" and body in DTYPES:
        import torch

        return getattr(torch, body)
    if tag == "$device" and type(body) is str and len(body) < 32:
        import torch

        try:
            return torch.device(body)
        except (RuntimeError, ValueError):
            raise ProtocolError(f"not a device: {body[:32]!r}") from None
    if tag == "$handle" and type(body) is list and len(body) == 3:
        ident, path, name = body
        if (
            type(ident) is not int
            or type(path) is not list
            or any(type(p) not in (str, int) for p in path)
            or type(name) is not str
        ):
            raise ProtocolError("malformed handle")
        return handle(ident, tuple(path), name[:200])
    raise ProtocolError(f"unknown tag {str(tag)[:40]!r}")


def _tensor(body: Any, blobs: list[bytes], device: Any) -> Any:
    import torch

    if type(body) is not list or len(body) != 3:
        raise ProtocolError("malformed tensor")
    dtype, shape, index = body
    if dtype not in DTYPES or type(shape) is not list or type(index) is not int:
        raise ProtocolError("malformed tensor")
    if len(shape) > 16 or any(type(n) is not int or n < 0 for n in shape):
        raise ProtocolError("malformed tensor shape")
    if not 0 <= index < len(blobs):
        raise ProtocolError("tensor refers to missing data")
    data = blobs[index]
    numel = 1
    for n in shape:
        numel *= n
    storage = torch.int16 if dtype == "bfloat16" else getattr(torch, dtype)
    itemsize = torch.empty((), dtype=storage).element_size()
    if numel * itemsize != len(data):
        raise ProtocolError(f"tensor of shape {shape} and dtype {dtype} with {len(data)} bytes")
    if numel == 0:
        flat = torch.empty(0, dtype=storage)
    else:
        flat = torch.frombuffer(bytearray(data), dtype=storage)
    if dtype == "bfloat16":
        flat = flat.view(torch.bfloat16)
    tensor = flat.reshape(shape)
    return tensor if device is None else tensor.to(device)
