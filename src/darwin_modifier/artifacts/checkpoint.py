"""A saved checkpoint's manifest: every file's size and hash, every tensor's hash.

``darwin-modifier compress`` seals its output with :func:`seal` before publishing it;
``darwin-modifier verify DIR`` runs :func:`verify`, which names every file or tensor
that differs, is missing, or does not belong (a stale shard or index of an older save
in the same directory, which vLLM would otherwise load).

Tensors are hashed from their raw bytes in the safetensors file, read through the
file's own header: any dtype (fp8, packed int4 of a quantized save) without
converting it, and without holding more than one tensor in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from darwin_modifier.artifacts.atomic import write_json

MANIFEST = "darwinlm_checkpoint.json"
FORMAT_VERSION = 1
_IGNORED = {MANIFEST, ".lock"}
_CHUNK = 1 << 24
_MAX_HEADER = 100_000_000


def seal(directory: str | os.PathLike) -> dict:
    """Write the manifest of everything in ``directory`` (subdirectories included)."""
    directory = Path(directory)
    manifest = {"format_version": FORMAT_VERSION, "files": _describe(directory)}
    write_json(directory / MANIFEST, manifest)
    return manifest


def verify(directory: str | os.PathLike) -> list[str]:
    """What differs from the manifest (empty: the checkpoint is as it was sealed)."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.exists():
        return [
            f"{path} is missing: {directory} was not saved by darwin-modifier "
            "compress, or its save did not finish"
        ]
    try:
        sealed = json.loads(path.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as err:
        return [f"{path} is corrupt ({err})"]
    found = _describe(directory)
    problems = []
    for name, entry in sealed.items():
        if name not in found:
            problems.append(f"{name} is missing")
        elif found[name] != entry:
            problems.append(_difference(name, entry, found[name]))
    problems += [
        f"{name} is not part of the checkpoint" for name in found if name not in sealed
    ]
    return problems


def _describe(directory: Path) -> dict:
    files = {}
    for path in sorted(directory.rglob("*")):
        name = path.relative_to(directory).as_posix()
        if path.is_dir() or path.name in _IGNORED or path.name.endswith(".partial"):
            continue
        entry = {"bytes": path.stat().st_size}
        if path.suffix == ".safetensors":
            try:
                entry.update(_tensor_hashes(path))
            except ValueError as err:
                entry["unreadable"] = str(err)
        else:
            entry["sha256"] = _hash_range(path, 0, entry["bytes"])
        files[name] = entry
    return files


def check_weights(directory: str | os.PathLike) -> None:
    """Refuse a model directory whose safetensors files are cut short or corrupt, or
    whose index names a missing shard: before loading, not deep inside it."""
    directory = Path(directory)
    if not directory.is_dir():
        return  # a hub name: the hub's download checks it
    for path in sorted(directory.glob("*.safetensors")):
        try:
            _header(path)
        except ValueError as err:
            raise ValueError(
                f"model weights {path} are unreadable ({err}); download or save the "
                "model again"
            ) from err
    for index in directory.glob("*.safetensors.index.json"):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (json.JSONDecodeError, KeyError, AttributeError) as err:
            raise ValueError(
                f"{index} is corrupt ({err}); save the model again"
            ) from err
        missing = sorted(s for s in shards if not (directory / s).exists())
        if missing:
            raise ValueError(
                f"{index} names shards that are missing: {missing}; download or save "
                "the model again"
            )


def _header(path: Path) -> tuple[dict, bytes, int]:
    """(header, its raw bytes, where the data starts) of a safetensors file (8-byte
    little-endian header length, JSON header, then the data); every tensor checked
    to lie within the file."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise ValueError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER:  # safetensors' own limit: a corrupt length
            raise ValueError(f"header length {length} is not a safetensors header")
        if 8 + length > size:
            raise ValueError(f"header of {length} bytes runs past the end ({size})")
        raw = file.read(length)
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"header is not JSON ({err})") from err
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    start = 8 + length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise ValueError(f"tensor {name} has no valid data_offsets")
        if start + offsets[1] > size:
            raise ValueError(f"tensor {name} runs past the end of the file")
    return header, raw, start


def _tensor_hashes(path: Path) -> dict:
    """The header's hash and each tensor's, read from the file's own layout."""
    header, raw, start = _header(path)
    tensors = {
        name: _hash_range(path, start + begin, end - begin)
        for name, info in sorted(header.items())
        if name != "__metadata__"
        for begin, end in [info["data_offsets"]]
    }
    return {"header_sha256": hashlib.sha256(raw).hexdigest(), "tensors": tensors}


def _hash_range(path: Path, offset: int, length: int) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as file:
        file.seek(offset)
        while length > 0:
            chunk = file.read(min(_CHUNK, length))
            if not chunk:
                break
            hasher.update(chunk)
            length -= len(chunk)
    return hasher.hexdigest()


def _difference(name: str, sealed: dict, found: dict) -> str:
    if "unreadable" in found:
        return f"{name} is unreadable ({found['unreadable']})"
    if sealed.get("bytes") != found.get("bytes"):
        return f"{name} has {found['bytes']} bytes, sealed with {sealed['bytes']}"
    changed = sorted(
        tensor
        for tensor, value in sealed.get("tensors", {}).items()
        if found.get("tensors", {}).get(tensor) != value
    )
    if changed:
        shown = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
        return f"{name}: {len(changed)} tensors differ ({shown})"
    return f"{name} differs from when it was sealed"
