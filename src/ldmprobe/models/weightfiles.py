"""Whether the weight files a model loads are complete, without reading the weights.

A partial download or an interrupted copy of the Hugging Face cache leaves a file shorter
than its format says; loading it fails deep inside a library ("Unable to load weights from
checkpoint file"). ``models.preflight`` checks every file a configured model will load before
any job, each as far as its format allows:

- **safetensors**: an 8-byte header length, a JSON header whose tensors' ``data_offsets`` end
  where the data ends; the file is exactly 8 + header + data bytes (the library refuses any
  other size).
- **ONNX**: a protobuf ``ModelProto``. Its top-level fields are walked by their tags and
  lengths (not parsed): a field that runs past the end of the file, or a model without its
  ``graph`` (field 7) and ``opset_import`` (field 8), is cut short. Weights stored outside the
  file (ONNX external data) are not checked.
- **PyTorch checkpoints** (``.pth``, ``.pt``, ``.bin``): ``torch.save`` writes a zip archive
  whose directory is at its end; a cut file has none. Its local entries are walked by their
  sizes for a lower bound of the size it had. The pre-1.6 pickle format cannot be checked.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

TORCH_SUFFIXES = (".pth", ".pt", ".bin")


@dataclass(frozen=True)
class Damage:
    """``path`` is ``actual`` bytes; its format says ``expected`` (or at least that, when
    ``exact`` is false)."""

    path: Path
    actual: int
    expected: int
    exact: bool

    def sizes(self) -> str:
        expected = f"{self.expected:,}" if self.exact else f"at least {self.expected:,}"
        return f"is {self.actual:,} bytes; its format says {expected}"


def check_weight_file(path: Path) -> Damage | None:
    """The damage of a weight file, or None when it is complete (or its format unknown)."""
    if not path.exists():  # a cache link whose blob is gone
        return Damage(path, 0, 1, exact=False)
    if path.suffix == ".safetensors":
        return _check_safetensors(path)
    if path.suffix == ".onnx":
        return _check_onnx(path)
    if path.suffix in TORCH_SUFFIXES:
        return _check_torch_zip(path)
    return None


def _check_safetensors(path: Path) -> Damage | None:
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return Damage(path, size, 8, exact=False)
        (header_size,) = struct.unpack("<Q", head)
        if 8 + header_size > size:
            return Damage(path, size, 8 + header_size, exact=False)
        try:
            header = json.loads(handle.read(header_size))
        except ValueError:
            # Not a header this file could have been cut from: a size it could not have.
            return Damage(path, size, 8 + header_size, exact=False)
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    expected = 8 + header_size + max(ends, default=0)
    return None if expected == size else Damage(path, size, expected, exact=True)


def _varint(data: bytes, position: int) -> tuple[int | None, int]:
    """A protobuf varint at ``position``: (value, next position); value None when the data
    ends inside it."""
    value = shift = 0
    while position < len(data):
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    return None, position + 1


def _check_onnx(path: Path) -> Damage | None:
    size = path.stat().st_size
    seen = set()
    position = 0
    with path.open("rb") as handle:
        while position < size:
            handle.seek(position)
            head = handle.read(20)  # a tag and a length: two varints of at most 10 bytes
            tag, at = _varint(head, 0)
            if tag is None:
                return Damage(path, size, position + at, exact=False)
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                end = position + _varint(head, at)[1]
            elif wire == 2:
                length, at = _varint(head, at)
                end = position + at + (length or 0)
            elif wire in (1, 5):
                end = position + at + (8 if wire == 1 else 4)
            else:
                return None  # not a ModelProto this check understands; onnxruntime will say
            if end > size:
                return Damage(path, size, end, exact=False)
            seen.add(field)
            position = end
    if not {7, 8} <= seen:  # cut between fields: the graph or the opset imports are gone
        return Damage(path, size, size + 1, exact=False)
    return None


_LOCAL_HEADER = struct.Struct("<4s5H3I2H")


def _zip64_compressed_size(extra: bytes, fallback: int) -> int:
    position = 0
    while position + 4 <= len(extra):
        block, length = struct.unpack_from("<2H", extra, position)
        if block == 1 and length >= 16:
            return struct.unpack_from("<Q", extra, position + 12)[0]
        position += 4 + length
    return fallback


def _check_torch_zip(path: Path) -> Damage | None:
    size = path.stat().st_size
    with path.open("rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            return None  # the legacy pickle format: nothing to check it against
    try:
        with zipfile.ZipFile(path) as archive:
            ends = [
                entry.header_offset + _LOCAL_HEADER.size + len(entry.filename.encode())
                + entry.compress_size
                for entry in archive.infolist()
            ]  # fmt: skip
        return None if max(ends, default=0) <= size else Damage(path, size, max(ends), False)
    except zipfile.BadZipFile:
        pass
    # No directory at the end: walk the entries from the start for the size it had at least.
    position = 0
    with path.open("rb") as handle:
        while True:
            handle.seek(position)
            head = handle.read(_LOCAL_HEADER.size)
            if len(head) < _LOCAL_HEADER.size or not head.startswith(b"PK\x03\x04"):
                break
            fields = _LOCAL_HEADER.unpack(head)
            compressed, name_length, extra_length = fields[7], fields[9], fields[10]
            if compressed == 0xFFFFFFFF:  # ZIP64: the sizes are in the extra field
                handle.seek(position + _LOCAL_HEADER.size + name_length)
                compressed = _zip64_compressed_size(handle.read(extra_length), compressed)
            end = position + _LOCAL_HEADER.size + name_length + extra_length + compressed
            if end > size:
                return Damage(path, size, end, exact=False)
            position = end
    # The entries fit; the directory after them (at least a 22-byte end record) is cut.
    return Damage(path, size, max(position + 22, size + 1), exact=False)
