"""One entity's streaming state as bytes, for a shared store (``serving.redis_state``).

No pickle: whoever can write to the store must not be able to run code in a replica that
reads it. The layout is a length-prefixed JSON header (format version, the scalars, and the
name, dtype and shape of each array) followed by the arrays' raw little-endian bytes in
header order. Only the dtypes the state uses are accepted when decoding, and the byte count
must match the header exactly.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from serving.stream_state import EntityState

FORMAT = 1
_LENGTH = struct.Struct("<I")
_DTYPES: dict[str, np.dtype[Any]] = {
    k: np.dtype(k) for k in ("<f4", "<f8", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4")
}
_ARRAYS = ("step_sum", "window_cat", "window_num", "window_time_us", "last_output")


class StateDecodeError(ValueError):
    """Bytes that are not a state this code wrote."""


def _little(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    return array.astype(array.dtype.newbyteorder("<"), copy=False)


def encode_state(state: EntityState) -> bytes:
    arrays: list[tuple[str, np.ndarray]] = []
    recurrent = state.recurrent
    if isinstance(recurrent, tuple):
        arrays += [("recurrent.0", recurrent[0]), ("recurrent.1", recurrent[1])]
    elif recurrent is not None:
        arrays.append(("recurrent", recurrent))
    for name in _ARRAYS:
        value = getattr(state, name)
        if value is not None:
            arrays.append((name, value))
    arrays = [(name, _little(a)) for name, a in arrays]
    header = {
        "format": FORMAT,
        "model_version": state.model_version,
        "events_seen": int(state.events_seen),
        "last_time_us": int(state.last_time_us),
        "last_seq": None if state.last_seq is None else int(state.last_seq),
        "arrays": [[name, a.dtype.str, list(a.shape)] for name, a in arrays],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([_LENGTH.pack(len(head)), head, *(a.tobytes() for _, a in arrays)])


def decode_state(blob: bytes) -> EntityState:
    try:
        (size,) = _LENGTH.unpack_from(blob, 0)
        header: dict[str, Any] = json.loads(blob[_LENGTH.size : _LENGTH.size + size])
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise StateDecodeError(f"unreadable state header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StateDecodeError(f"state format {header.get('format')!r}, this code reads {FORMAT}")
    offset, arrays = _LENGTH.size + size, dict[str, np.ndarray]()
    for name, dtype, shape in header.get("arrays", []):
        kind = _DTYPES.get(dtype)
        if kind is None or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise StateDecodeError(f"state array {name!r}: dtype {dtype!r}, shape {shape!r}")
        n = kind.itemsize * int(np.prod(shape, dtype=np.int64))
        if offset + n > len(blob):
            raise StateDecodeError(f"state array {name!r} is cut short")
        arrays[name] = np.frombuffer(blob, dtype=kind, count=n // kind.itemsize, offset=offset)
        arrays[name] = arrays[name].reshape(shape).astype(kind.newbyteorder("="))
        offset += n
    if offset != len(blob):
        raise StateDecodeError(f"{len(blob) - offset} bytes after the state's arrays")
    recurrent: Any = arrays.get("recurrent")
    if "recurrent.0" in arrays:
        recurrent = (arrays["recurrent.0"], arrays["recurrent.1"])
    return EntityState(
        model_version=str(header["model_version"]),
        events_seen=int(header["events_seen"]),
        last_time_us=int(header["last_time_us"]),
        last_seq=None if header.get("last_seq") is None else int(header["last_seq"]),
        recurrent=recurrent,
        step_sum=arrays.get("step_sum"),
        window_cat=arrays.get("window_cat"),
        window_num=arrays.get("window_num"),
        window_time_us=arrays.get("window_time_us"),
        last_output=arrays.get("last_output"),
    )
