"""Tensor files in the safetensors format (8-byte little-endian header length, a JSON
header, then raw little-endian tensor data): ``st.io.save_file`` / ``st.io.load_file``
for plain files that the ``safetensors`` package reads and writes, and the model files of
``model.save``, which are plain safetensors with steepest's architecture, compile config
and training state as JSON in ``__metadata__``.

Plain safetensors has no integrity check; model files add a SHA-256 over the header
(without the digest) and the data, so a truncated or bit-flipped file is refused with a
clear error instead of loading garbage. Every file is distrusted: the header must fit the
file, its tensors must tile the data exactly (in order, no gaps or overlaps, sizes equal
to dtype × shape), its JSON is depth-bounded, and the data is read through a memory map,
each tensor copied once. Writes are atomic: a temporary file beside the target, fsync,
then ``os.replace``; a save removes the temporary files that killed saves of the same path
left behind.
"""

from __future__ import annotations

import glob
import hashlib
import json
import mmap
import os
import struct
import tempfile
from typing import Any, Dict, Mapping, Tuple, Union

import numpy as np

from . import _core
from ._core import Tensor

# safetensors dtype names for the NumPy dtypes steepest stores.
_CODES = {"float16": "F16", "float32": "F32", "float64": "F64", "int32": "I32", "int64": "I64",
          "bool": "BOOL"}
# Every dtype the format's common writers produce; those steepest has no type for widen
# without loss (8- and 16-bit integers to int32, uint32 to int64).
_READ = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64,
         "BOOL": np.bool_, "BF16": np.uint16, "I8": np.int8, "U8": np.uint8, "I16": np.int16,
         "U16": np.uint16, "U32": np.uint32}
_WIDEN = {"I8": np.int32, "U8": np.int32, "I16": np.int32, "U16": np.int32, "U32": np.int64}
_DIGEST_KEY = "sha256"
_MAX_HEADER = 100 * 1024 * 1024
_MAX_JSON_DEPTH = 64


class CorruptFileError(ValueError):
    """The file is not a complete, well-formed tensor file."""


# ------------------------------------------------------------------------ writing


def _digest(header: Dict[str, Any], data: Any) -> str:
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    h = hashlib.sha256(canonical + b"\0")
    h.update(data)
    return h.hexdigest()


def _encode(name: str, value: Any) -> Tuple[str, np.ndarray]:
    """(safetensors dtype, contiguous little-endian array) for a Tensor or an array."""
    if isinstance(value, Tensor):
        if value.dtype == "bfloat16":
            # Widening to float32 is exact, so the top 16 bits are the bfloat16 bits.
            wide = np.ascontiguousarray(value.to("cpu").astype("float32").numpy())
            return "BF16", (wide.view(np.uint32) >> 16).astype("<u2")
        value = value.to("cpu").numpy()
    array = np.ascontiguousarray(value)
    if array.dtype.name not in _CODES:
        raise TypeError(f"[save] tensor {name!r} has unsupported dtype {array.dtype}; expected "
                        "float16, bfloat16, float32, float64, int32, int64 or bool")
    return _CODES[array.dtype.name], array.astype(array.dtype.newbyteorder("<"), copy=False)


def _remove_stale_temporaries(path: str) -> None:
    for stale in glob.glob(os.path.join(os.path.dirname(os.path.abspath(path)),
                                        f".{glob.escape(os.path.basename(path))}.*.tmp")):
        try:
            os.unlink(stale)
        except OSError:
            pass


def write(path: str, tensors: Mapping[str, Any], metadata: Dict[str, str], digest: bool = True) -> None:
    """Writes ``tensors`` and string ``metadata`` atomically to ``path``; ``digest`` adds
    the SHA-256 that model files carry."""
    header: Dict[str, Any] = {}
    chunks = []
    offset = 0
    for name, value in tensors.items():
        code, array = _encode(name, value)
        raw = array.tobytes()
        header[name] = {"dtype": code, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    data = b"".join(chunks)
    if metadata or digest:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    if digest:
        header["__metadata__"][_DIGEST_KEY] = _digest(header, data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    folder = os.path.dirname(os.path.abspath(path))
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
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


# ------------------------------------------------------------------------ reading


def _json_depth(text: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _check_entries(where: str, header: Dict[str, Any], data_size: int) -> list:
    """The tensor entries sorted by offset, each checked against the rules of the format."""
    entries = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CorruptFileError(f"{where}: tensor {name!r} has a malformed entry")
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if code not in _READ:
            raise CorruptFileError(f"{where}: tensor {name!r} has unsupported dtype {code!r}")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise CorruptFileError(f"{where}: tensor {name!r} has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise CorruptFileError(f"{where}: tensor {name!r} has invalid data_offsets {offsets!r}")
        size = int(np.prod(shape, dtype=object)) * np.dtype(_READ[code]).itemsize
        if offsets[1] - offsets[0] != size:
            raise CorruptFileError(f"{where}: tensor {name!r} of {code} {tuple(shape)} needs {size} bytes "
                                   f"but its data_offsets {offsets} span {offsets[1] - offsets[0]}")
        entries.append((offsets[0], offsets[1], name, code, tuple(shape)))
    entries.sort()
    position = 0
    for begin, end, name, _, _ in entries:
        if begin != position:
            raise CorruptFileError(f"{where}: tensor {name!r} starts at byte {begin} of the data, expected "
                                   f"{position} (tensors must tile the data in order, without overlaps)")
        position = end
    if position != data_size:
        raise CorruptFileError(f"{where}: the tensors cover {position} bytes but the file holds {data_size} "
                               "bytes of data (truncated or padded)")
    return entries


def read(path: str, op: str = "load_model", digest: bool = True
         ) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """The tensors (NumPy arrays; bfloat16 as its uint16 bits) and string metadata of a
    safetensors file, checked as the module docstring says. ``digest``: the file must
    carry a valid steepest SHA-256 (model files)."""
    tensors, metadata, _ = _read(path, op, digest)
    return tensors, metadata


def _read(path: str, op: str, digest: bool) -> Tuple[Dict[str, np.ndarray], Dict[str, str], Dict[str, str]]:
    """read(), plus each tensor's safetensors dtype."""
    where = f"[{op}] {path}"
    try:
        f = open(path, "rb")
    except OSError as e:
        raise OSError(e.errno, f"{where}: {e.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if not os.path.isfile(path) or size < 8:
            raise CorruptFileError(f"{where}: not a tensor file ({size} bytes)")
        (length,) = struct.unpack("<Q", f.read(8))
        if length > _MAX_HEADER or 8 + length > size:
            raise CorruptFileError(f"{where}: header length {length} does not fit the file of {size} bytes "
                                   "(truncated or not a steepest/safetensors file)")
        text = f.read(length)
        if _json_depth(text) > _MAX_JSON_DEPTH:
            raise CorruptFileError(f"{where}: the header nests deeper than {_MAX_JSON_DEPTH} levels")
        try:
            header = json.loads(text.decode("utf-8"))
            if not isinstance(header, dict):
                raise TypeError("the header is not a JSON object")
            metadata = header.pop("__metadata__", {})
            if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
                raise TypeError("__metadata__ must map strings to strings")
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as e:
            raise CorruptFileError(f"{where}: the header is damaged ({e})") from None
        data_size = size - 8 - length
        entries = _check_entries(where, header, data_size)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            data = memoryview(mapped)[8 + length:]
            try:
                if digest:
                    expected = metadata.pop(_DIGEST_KEY, None)
                    if expected is None:
                        raise CorruptFileError(f"{where}: the file has no steepest checksum; it is a plain "
                                               "safetensors file (read it with st.io.load_file)")
                    check_header = dict(header)
                    check_header["__metadata__"] = dict(metadata)
                    if _digest(check_header, data) != expected:
                        raise CorruptFileError(f"{where}: checksum mismatch — the file is truncated or corrupted")
                tensors = {}
                for begin, end, name, code, shape in entries:
                    stored = np.dtype(_READ[code]).newbyteorder("<")
                    # One copy, out of the map (no view may outlive it).
                    tensors[name] = np.frombuffer(data[begin:end], dtype=stored).reshape(shape).astype(
                        _WIDEN.get(code, stored.newbyteorder("=")))
            finally:
                data.release()
    return tensors, metadata, {name: code for _, _, name, code, _ in entries}


# ------------------------------------------------------------------------ public


def save_file(tensors: Mapping[str, Union[Tensor, np.ndarray]], path: str,
              metadata: Dict[str, str] = None) -> None:
    """Writes a plain safetensors file (readable by the ``safetensors`` package) from
    ``{name: Tensor | ndarray}``; float16 and bfloat16 included. Atomic."""
    if not isinstance(tensors, Mapping) or not all(isinstance(k, str) for k in tensors):
        raise TypeError("[save_file] tensors must be a dict of name -> Tensor or ndarray")
    write(path, tensors, dict(metadata or {}), digest=False)


def load_file(path: str) -> Dict[str, Tensor]:
    """``{name: Tensor}`` from any safetensors file (written by steepest, or by the
    ``safetensors`` package from NumPy or torch). int8/uint8/int16/uint16 become int32
    and uint32 int64, without loss."""
    tensors, _, codes = _read(path, "load_file", digest=False)
    result = {}
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        result[name] = _core.from_dlpack(array, array, "bfloat16" if codes[name] == "BF16" else None)
    return result


__all__ = ["CorruptFileError", "load_file", "save_file"]
