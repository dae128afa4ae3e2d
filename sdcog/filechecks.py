"""What a downloaded file must pass before anything reads it as weights or settings: checks on
its bytes, never on its name."""

import json
import struct
import tarfile
from pathlib import Path

MAX_JSON_BYTES = 1 << 20
# Pickled weights: refused from a URL's path or a served file name, before any download.
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")


def check_json(path: Path, input_name: str, reference: str) -> None:
    """A config file must be a small JSON object; anything else is refused before use."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ValueError("too large")
        if not isinstance(json.loads(path.read_text()), dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{input_name}: {reference} is not a JSON config: {e}") from None


def check_safetensors_header(path: Path, input_name: str, reference: str) -> None:
    """Refuse anything but safetensors by reading its header, before any tensor is deserialised:
    a pickle (.ckpt, .bin, .pt) starts with other bytes and never reaches a loader."""
    with open(path, "rb") as f:
        head = f.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        if not 2 <= size <= min(100 * 1024**2, path.stat().st_size - 8):
            raise ValueError(
                f"{input_name}: {reference} is not a safetensors file (pickled weights such as "
                ".ckpt, .bin or .pt are never loaded)"
            )
        try:
            header = json.loads(f.read(size))
        except ValueError:
            raise ValueError(f"{input_name}: {reference} has a broken safetensors header") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if path.stat().st_size != 8 + size + end:
        raise ValueError(
            f"{input_name}: {reference} is truncated or padded ({path.stat().st_size} bytes, "
            f"its header describes {8 + size + end})"
        )


def check_tar(path: Path, input_name: str, reference: str) -> None:
    """An archive whose member list can be read (its members are checked when they are read)."""
    try:
        with tarfile.open(path) as tar:
            tar.getmembers()
    except (tarfile.TarError, EOFError):
        raise ValueError(f"{input_name}: {reference} is not a .tar archive") from None


# What a cached file must pass before it is used, by the suffix it is stored under.
CHECKS = {".json": check_json, ".safetensors": check_safetensors_header, ".tar": check_tar}
