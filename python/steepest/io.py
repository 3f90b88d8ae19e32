"""Model files: the safetensors format (8-byte little-endian header length, a JSON
header, then raw little-endian tensor data), with steepest's architecture, compile
config and training state as JSON in ``__metadata__``.

Plain safetensors has no integrity check; steepest adds a SHA-256 over the header
(without the digest) and the data, so a truncated or bit-flipped file is refused with
a clear error instead of loading garbage. Writes are atomic: a temporary file in the
same folder, fsync, then ``os.replace``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from typing import Any, Dict, Tuple

import numpy as np

_DTYPES = {"float32": "F32", "float64": "F64", "int32": "I32", "int64": "I64", "bool": "BOOL"}
_NUMPY = {v: np.dtype(k) for k, v in _DTYPES.items()}
_DIGEST_KEY = "sha256"
_MAX_HEADER = 100 * 1024 * 1024


class CorruptFileError(ValueError):
    """The file is not a complete, unmodified steepest model file."""


def _digest(header: Dict[str, Any], data: bytes) -> str:
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical + b"\0" + data).hexdigest()


def write(path: str, tensors: Dict[str, np.ndarray], metadata: Dict[str, str]) -> None:
    """Writes ``tensors`` and string ``metadata`` atomically to ``path``."""
    header: Dict[str, Any] = {}
    chunks = []
    offset = 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        if array.dtype.name not in _DTYPES:
            raise TypeError(f"[save] tensor {name!r} has unsupported dtype {array.dtype}")
        raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _DTYPES[array.dtype.name], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    data = b"".join(chunks)
    header["__metadata__"] = dict(metadata)
    header["__metadata__"][_DIGEST_KEY] = _digest(header, data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".steepest-", suffix=".tmp", dir=folder)
    try:
        # mkstemp creates 0600; give the file the permissions open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def read(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Reads a file written by :func:`write`, verifying its integrity."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise CorruptFileError(f"[load_model] {path}: file is truncated ({len(blob)} bytes)")
    (length,) = struct.unpack("<Q", blob[:8])
    if length > _MAX_HEADER or 8 + length > len(blob):
        raise CorruptFileError(
            f"[load_model] {path}: header length {length} does not fit the file of {len(blob)} "
            "bytes (truncated or not a steepest/safetensors file)"
        )
    try:
        header = json.loads(blob[8:8 + length].decode("utf-8"))
        metadata = dict(header.pop("__metadata__"))
        expected = metadata.pop(_DIGEST_KEY)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CorruptFileError(f"[load_model] {path}: the header is damaged ({e})") from None
    data = blob[8 + length:]
    check_header = dict(header)
    check_header["__metadata__"] = dict(metadata)
    if _digest(check_header, data) != expected:
        raise CorruptFileError(
            f"[load_model] {path}: checksum mismatch — the file is truncated or corrupted"
        )
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype = _NUMPY[entry["dtype"]]
        tensors[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(entry["shape"]).copy()
    return tensors, metadata
