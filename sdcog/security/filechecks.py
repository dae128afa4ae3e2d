"""What a downloaded file must pass before anything reads it as weights or settings: checks on
its bytes, never on its name, each refusal naming the input and the reference (never a path on
the server)."""

import json
import struct
import tarfile
from pathlib import Path

from safetensors import SafetensorError, safe_open

from ..common.limits import MAX_EMBEDDING_ROWS, MAX_HEADER_BYTES, MAX_TAR_MEMBERS

MAX_JSON_BYTES = 1 << 20
# Pickled weights: refused from a URL's path or a served file name, before any download.
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")


def check_json(path: Path, input_name: str, reference: str) -> None:
    """A config file must be a small JSON object; anything else is refused before use."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"larger than {MAX_JSON_BYTES} bytes")
        read_json_object(path.read_bytes())
    except ValueError as e:
        raise ValueError(f"{input_name}: {reference} is not a JSON config: {e}") from None


def read_json_object(data: bytes) -> dict:
    """A JSON object from bytes, or a ValueError that says what is wrong with them."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, RecursionError):
        raise ValueError("not UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"broken JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def check_safetensors_header(path: Path, input_name: str, reference: str) -> None:
    """Refuse anything but safetensors by reading its header, before any tensor is deserialised:
    a pickle (.ckpt, .bin, .pt) starts with other bytes and never reaches a loader. The header's
    size is bounded before it is read; the safetensors library parses and validates it (offsets,
    shapes, the file's length)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
    if not 2 <= length <= size - 8:
        raise ValueError(
            f"{input_name}: {reference} is not a safetensors file (pickled weights such as "
            ".ckpt, .bin or .pt are never loaded)"
        )
    if length > MAX_HEADER_BYTES:
        raise ValueError(
            f"{input_name}: {reference} has a safetensors header of {length} bytes; at most "
            f"{MAX_HEADER_BYTES} are read"
        )
    try:
        with safe_open(path, framework="pt") as opened:
            opened.keys()
    except SafetensorError as e:
        if "not fully covered" in str(e):  # the data ends before or after where it should
            raise ValueError(
                f"{input_name}: {reference} is truncated or padded ({size} bytes, not the length "
                "its header describes)"
            ) from None
        raise ValueError(
            f"{input_name}: {reference} is not a valid safetensors file: {e}"
        ) from None


def embedding_rows(path: Path, input_name: str, reference: str) -> int:
    """The vectors an embedding file defines per text encoder (read from its checked header),
    refused above MAX_EMBEDDING_ROWS."""
    with safe_open(path, framework="pt") as opened:
        shapes = [opened.get_slice(key).get_shape() for key in opened.keys()]
    rows = max((shape[0] if len(shape) > 1 else 1 for shape in shapes), default=0)
    if rows > MAX_EMBEDDING_ROWS:
        raise ValueError(
            f"{input_name}: {reference} holds {rows} embedding vectors; at most "
            f"{MAX_EMBEDDING_ROWS} are taken (one 77-token chunk)"
        )
    return rows


def tar_members(path: Path, input_name: str, reference: str) -> dict[str, tarfile.TarInfo]:
    """The regular files of an uncompressed tar by name, read from its headers only (at most
    MAX_TAR_MEMBERS entries; nothing is extracted)."""
    members: dict[str, tarfile.TarInfo] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for count, member in enumerate(tar, 1):
                if count > MAX_TAR_MEMBERS:
                    raise ValueError(
                        f"{input_name}: {reference} holds more than {MAX_TAR_MEMBERS} entries"
                    )
                if member.issparse():  # its size says what reading it would write out
                    raise ValueError(f"{input_name}: {reference} holds a sparse file, refused")
                if member.isreg():
                    members[member.name.removeprefix("./")] = member
    except (tarfile.TarError, EOFError, OSError):
        raise ValueError(f"{input_name}: {reference} is not an uncompressed .tar archive") from None
    return members


def check_tar(path: Path, input_name: str, reference: str) -> None:
    """An archive whose member list can be read (its members are checked when they are read)."""
    tar_members(path, input_name, reference)


# What a cached file must pass before it is used, by the suffix it is stored under.
CHECKS = {".json": check_json, ".safetensors": check_safetensors_header, ".tar": check_tar}
