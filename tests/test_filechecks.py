"""The checks a downloaded file passes before anything reads it: hostile safetensors headers and
tars are refused with the input's name, quickly and without reading what they announce."""

import io
import json
import pickle
import struct
import tarfile
import time

import pytest
import torch
from safetensors.torch import save_file

from sdcog.common.limits import MAX_EMBEDDING_ROWS, MAX_HEADER_BYTES, MAX_TAR_MEMBERS
from sdcog.security import filechecks


def safetensors_with(tmp_path, header: bytes, data: bytes = b"\0" * 8):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
HOSTILE_HEADERS = {
    "nested 200k deep": b"[" * 200_000 + b"]" * 200_000,
    "a list": b"[1, 2, 3]",
    "a string": b'"x"',
    "offsets not numbers": json.dumps({"a": {**ENTRY, "data_offsets": [0, "8"]}}).encode(),
    "offsets backwards": json.dumps({"a": {**ENTRY, "data_offsets": [8, 0]}}).encode(),
    "overlapping": json.dumps({"a": ENTRY, "b": ENTRY}).encode(),
    "shape and size differ": json.dumps({"a": {**ENTRY, "shape": [3]}}).encode(),
    "huge shape": json.dumps({"a": {**ENTRY, "shape": [2**40, 2**40]}}).encode(),
    "unknown dtype": json.dumps({"a": {**ENTRY, "dtype": "X9"}}).encode(),
    "metadata not strings": json.dumps({"__metadata__": {"a": {"b": 1}}, "a": ENTRY}).encode(),
    "not UTF-8": b'{"\xff": 1}',
}


@pytest.mark.parametrize("header", HOSTILE_HEADERS.values(), ids=HOSTILE_HEADERS)
def test_hostile_headers_are_refused_by_name(tmp_path, header):
    path = safetensors_with(tmp_path, header)
    with pytest.raises(ValueError, match=r"^lora_weights: ref is not a valid safetensors file"):
        filechecks.check_safetensors_header(path, "lora_weights", "ref")


def test_a_header_over_the_limit_is_refused_unread(tmp_path):
    size = MAX_HEADER_BYTES + 1
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:  # sparse: the header's bytes are never written, nor read
        f.write(struct.pack("<Q", size))
        f.truncate(8 + size + 8)
    started = time.monotonic()
    with pytest.raises(ValueError, match=rf"^lora_weights: ref has a safetensors header of {size}"):
        filechecks.check_safetensors_header(path, "lora_weights", "ref")
    assert time.monotonic() - started < 0.1


def test_pickles_and_truncated_files_are_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="^lora_weights: ref is not a safetensors file"):
        filechecks.check_safetensors_header(path, "lora_weights", "ref")
    save_file({"w": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="^lora_weights: ref is truncated or padded"):
        filechecks.check_safetensors_header(path, "lora_weights", "ref")


def test_embedding_rows_are_counted_and_bounded(tmp_path):
    path = tmp_path / "e.safetensors"
    save_file({"<tok>": torch.zeros(3, 8)}, path)
    assert filechecks.embedding_rows(path, "textual_inversions", "ref") == 3
    save_file({"clip_l": torch.zeros(2, 8), "clip_g": torch.zeros(2, 16)}, path)
    assert filechecks.embedding_rows(path, "textual_inversions", "ref") == 2
    save_file({"<tok>": torch.zeros(8)}, path)
    assert filechecks.embedding_rows(path, "textual_inversions", "ref") == 1
    save_file({"<tok>": torch.zeros(MAX_EMBEDDING_ROWS + 1, 8)}, path)
    with pytest.raises(
        ValueError, match=rf"^textual_inversions: ref holds {MAX_EMBEDDING_ROWS + 1}"
    ):
        filechecks.embedding_rows(path, "textual_inversions", "ref")


def _tar(path, entries: list[tarfile.TarInfo], mode: str = "w") -> None:
    with tarfile.open(path, mode) as tar:
        for info in entries:
            tar.addfile(info, io.BytesIO(b"\0" * info.size) if info.isreg() else None)


def test_tars_are_read_from_their_headers_and_bounded(tmp_path):
    path = tmp_path / "t.tar"
    _tar(path, [tarfile.TarInfo("./a.json"), tarfile.TarInfo("b")])
    assert set(filechecks.tar_members(path, "replicate_weights", "ref")) == {"a.json", "b"}
    many = [tarfile.TarInfo(f"f{i}") for i in range(MAX_TAR_MEMBERS + 1)]
    _tar(path, many)
    with pytest.raises(ValueError, match=rf"more than {MAX_TAR_MEMBERS} entries"):
        filechecks.tar_members(path, "replicate_weights", "ref")
    _tar(path, [tarfile.TarInfo("a")], mode="w:gz")  # a decompression bomb's wrapper
    with pytest.raises(ValueError, match="^replicate_weights: ref is not an uncompressed .tar"):
        filechecks.tar_members(path, "replicate_weights", "ref")


def test_a_sparse_member_is_refused_before_it_is_read(tmp_path):
    # GNU sparse: a few KB of archive that reads back as 1.4 GB of zeros.
    sparse = tarfile.TarInfo("lora.safetensors")
    sparse.type = tarfile.GNUTYPE_SPARSE
    sparse.size = 0
    path = tmp_path / "t.tar"
    _tar(path, [sparse], mode="w")
    with pytest.raises(ValueError, match="^replicate_weights: ref holds a sparse file"):
        filechecks.tar_members(path, "replicate_weights", "ref")
