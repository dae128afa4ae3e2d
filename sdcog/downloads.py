"""Downloads for per-prediction adapters (LoRAs, embeddings): safetensors only, size- and
time-bounded, through one least-recently-used cache keyed by reference and content hash.

A reference is an http(s) URL (civitai's `api/download/models/<id>` included: what a file is is
decided by its bytes, never by a missing suffix; a URL whose path ends in a pickle suffix is
refused before any request), a civitai AIR id (`civitai:<model>@<version>`), or a Hugging Face
repository `owner/repo` holding one safetensors file (or one named
pytorch_lora_weights.safetensors). Every request goes through sdcog.transfer: public addresses
only (netguard), checked at each redirect, within one deadline for the whole download
(ADAPTER_TIMEOUT_S), and stopped at once by a cancelled prediction (`stop`). HF_TOKEN and
CIVITAI_TOKEN, when set, go to their own hosts only. The limits and endpoints are settings.
"""

import functools
import hashlib
import json
import re
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import unquote

import requests

from . import transfer
from .filechecks import CHECKS, PICKLE_SUFFIXES
from .references import AIR, REPO, check_reference, check_repo, origin
from .settings import Settings

CHUNK = 1 << 16
MAX_LISTING_BYTES = 16 << 20  # a Hugging Face repository's file list (the API's JSON)
PREFERRED = "pytorch_lora_weights.safetensors"
# A diffusers model's weight files, in order of preference.
MODEL_WEIGHTS = ("diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors")
DISPOSITION_NAME = re.compile(r"""filename\*?=(?:UTF-8'')?"?([^";]+)"?""", re.I)


class AdapterCache:
    def __init__(
        self,
        settings: Settings | None = None,
        root: Path | None = None,
        max_bytes: int | None = None,
        max_file_bytes: int | None = None,
        timeout_s: float | None = None,
        endpoint: str | None = None,
        civitai: str | None = None,
        size_setting: str = "ADAPTER_MAX_BYTES",
        timeout_setting: str = "ADAPTER_TIMEOUT_S",
    ) -> None:
        """The cache `settings` (default: the environment's) describe; an argument given
        replaces its setting. `size_setting` and `timeout_setting` are what the refusals call
        the bounds (a model's single file is bounded by MODEL_CACHE_GB and MODEL_TIMEOUT_S)."""
        settings = settings or Settings.from_env()
        self.root = root or settings.adapter_cache_dir
        self.max_bytes = max_bytes or settings.adapter_cache_bytes
        self.max_file_bytes = max_file_bytes or settings.adapter_max_bytes
        self.timeout_s = timeout_s or settings.adapter_timeout_s
        self.endpoint = (endpoint or settings.hf_endpoint).rstrip("/")
        self.civitai = (civitai or settings.civitai_endpoint).rstrip("/")
        self.allowed, self.trusted = settings.private_networks, settings.trusted_origins
        self.size_setting, self.timeout_setting = size_setting, timeout_setting
        self.tokens = settings.tokens
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "index.json"
        # reference -> {"sha256", "size", "used"}
        self.index: dict[str, dict] = (
            json.loads(self.index_path.read_text()) if self.index_path.exists() else {}
        )

    def fetch(
        self,
        reference: str,
        input_name: str,
        suffix: str = ".safetensors",
        stop: threading.Event | None = None,
    ) -> Path:
        """The local file for a reference: from the cache, or downloaded, checked and cached.
        `suffix` says what it must be (CHECKS): .safetensors, .json or .tar. `stop`, once set,
        ends a download at once (PredictionCancelledError)."""
        url = functools.partial(self._url, reference, input_name, stop)
        return self._fetched(reference, url, suffix, input_name, stop)

    def derived(self, key: str, make: Callable[[], bytes], input_name: str) -> Path:
        """A safetensors file made from cached ones (a converted LoRA), cached under `key`."""

        def write(part: Path) -> str:
            data = make()
            part.write_bytes(data)
            return hashlib.sha256(data).hexdigest()

        return self._cached(key, ".safetensors", input_name, write)

    def fetch_model(
        self, reference: str, input_name: str, stop: threading.Event | None = None
    ) -> Path:
        """A diffusers-format model (a ControlNet) as a folder: its config.json and its
        safetensors weights, each fetched and cached like an adapter file."""
        # Resolved at most once, and only when a file is not in the cache yet.
        urls = functools.cache(lambda: self._model_urls(reference, input_name, stop))
        weights = self._fetched(
            reference, lambda: urls()["weights"], ".safetensors", input_name, stop
        )
        config_key = f"{reference}#config.json"
        config = self._fetched(config_key, lambda: urls()["config"], ".json", input_name, stop)
        folder = self.root / f"model-{weights.stem[:16]}-{config.stem[:16]}"
        if not folder.exists():
            staging = Path(tempfile.mkdtemp(dir=self.root))
            (staging / "config.json").symlink_to(config)
            (staging / "diffusion_pytorch_model.safetensors").symlink_to(weights)
            staging.rename(folder)
        return folder

    def forget(self, reference: str) -> None:
        """Drop a reference's file (a checkpoint once converted): it is fetched again if asked
        for again."""
        entry = self.index.pop(reference, None)
        if entry and all(e["sha256"] != entry["sha256"] for e in self.index.values()):
            self._path(entry["sha256"], entry.get("suffix")).unlink(missing_ok=True)
        self._save_index()

    def _fetched(
        self,
        key: str,
        url: Callable[[], str],
        suffix: str,
        input_name: str,
        stop: threading.Event | None,
    ) -> Path:
        """The file at url(), downloaded once and cached under `key`."""
        return self._cached(
            key, suffix, input_name, lambda part: self._download(url(), part, input_name, key, stop)
        )

    def _cached(self, key: str, suffix: str, input_name: str, write: Callable[[Path], str]) -> Path:
        """The cached file for `key`, or write(part) (which returns the content's sha256) run,
        its result checked and cached."""
        entry = self.index.get(key)
        if entry and (path := self._path(entry["sha256"], entry.get("suffix"))).exists():
            print(f"{input_name}: {key} from the cache")
            entry["used"] = time.time()
            self._save_index()
            return path
        part = Path(tempfile.mkstemp(dir=self.root, suffix=".part")[1])
        try:
            digest = write(part)
            CHECKS[suffix](part, input_name, key)
            path = self._path(digest, suffix)
            part.replace(path)
        finally:
            part.unlink(missing_ok=True)
        self.index[key] = {
            "sha256": digest, "suffix": suffix, "size": path.stat().st_size, "used": time.time(),
        }  # fmt: skip
        self._evict(keep=digest)
        return path

    def _path(self, digest: str, suffix: str | None = None) -> Path:
        return self.root / f"{digest}{suffix or '.safetensors'}"

    def _model_urls(
        self, reference: str, input_name: str, stop: threading.Event | None
    ) -> dict[str, str]:
        """config.json and weights of a diffusers model: a .safetensors URL with config.json
        beside it, or a Hugging Face repository (its fp16 weights when it ships them)."""
        if reference.startswith(("https://", "http://")):
            weights = self._url(reference, input_name, stop)
            return {"weights": weights, "config": weights.rsplit("/", 1)[0] + "/config.json"}
        names = self._repo_files(reference, input_name, stop)
        choice = next((n for n in MODEL_WEIGHTS if n in names), None)
        if "config.json" not in names or choice is None:
            raise ValueError(
                f"{input_name}: {reference} is not a diffusers-format model (it needs "
                f"config.json and {' or '.join(MODEL_WEIGHTS)})"
            )
        base = f"{self.endpoint}/{reference}/resolve/main"
        return {"weights": f"{base}/{choice}", "config": f"{base}/config.json"}

    def _url(self, reference: str, input_name: str, stop: threading.Event | None = None) -> str:
        check_reference(reference, input_name)
        if reference.startswith(("https://", "http://")):
            if origin(reference) == ("https", "civitai.com"):  # CIVITAI_ENDPOINT: a mirror
                return self.civitai + reference.removeprefix("https://civitai.com")
            return reference
        if air := AIR.fullmatch(reference):
            return f"{self.civitai}/api/download/models/{air['version']}"
        names = self._repo_files(reference, input_name, stop)
        candidates = [n for n in names if n.endswith(".safetensors")]
        if PREFERRED in candidates:
            candidates = [PREFERRED]
        if len(candidates) != 1:
            raise ValueError(
                f"{input_name}: {reference} holds {len(candidates)} safetensors files "
                f"({', '.join(candidates) or 'none'}); give the URL of one"
            )
        return f"{self.endpoint}/{reference}/resolve/main/{candidates[0]}"

    def _repo_files(
        self, reference: str, input_name: str, stop: threading.Event | None
    ) -> list[str]:
        if not REPO.fullmatch(reference):  # an AIR id names a file, not a diffusers model
            raise ValueError(f"{input_name}: {reference[:200]!r} is not a Hugging Face owner/repo")
        check_repo(reference, input_name)
        api = f"{self.endpoint}/api/models/{reference}"
        with self._get(api, input_name, stop) as response:
            if response.status_code == 404:
                raise ValueError(f"{input_name}: no Hugging Face repository {reference}")
            status = response.status_code
            body = response.raw.read(MAX_LISTING_BYTES + 1, decode_content=True)
        if len(body) > MAX_LISTING_BYTES:
            raise ValueError(
                f"{input_name}: {reference}'s file list is larger than {MAX_LISTING_BYTES} bytes"
            )
        try:
            if status != 200:
                raise ValueError(f"status {status}")
            return [s["rfilename"] for s in json.loads(body).get("siblings", [])]
        except (ValueError, AttributeError, KeyError, TypeError) as e:
            # An answer that is not a Hugging Face model listing.
            raise ValueError(f"{input_name}: could not look up {reference}: {e}") from None

    def _download(
        self, url: str, dest: Path, input_name: str, reference: str, stop: threading.Event | None
    ) -> str:
        print(f"{input_name}: downloading {reference}")
        digest = hashlib.sha256()
        too_big = ValueError(
            f"{input_name}: {reference} is larger than the {self.max_file_bytes} byte limit "
            f"({self.size_setting})"
        )
        with self._get(url, input_name, stop) as response:
            self._check_response(response, input_name, reference)
            if _content_length(response) > self.max_file_bytes:
                raise too_big
            written = 0
            with open(dest, "wb") as f:
                for chunk in response.iter_content(CHUNK):
                    written += len(chunk)
                    if written > self.max_file_bytes:
                        raise too_big
                    digest.update(chunk)
                    f.write(chunk)
        return digest.hexdigest()

    def _get(
        self, url: str, input_name: str, stop: threading.Event | None
    ) -> AbstractContextManager[requests.Response]:
        return transfer.get(
            url, input_name, self.timeout_s, stop, self._headers, self.allowed, self.trusted,
            self.timeout_setting,
        )  # fmt: skip

    def _token_variable(self, url: str) -> str | None:
        """The token a host gets, if it is one that takes one."""
        hosts = {origin(self.endpoint): "HF_TOKEN", origin(self.civitai): "CIVITAI_TOKEN"}
        return hosts.get(origin(url))

    def _headers(self, url: str) -> dict[str, str]:
        """A token for its own host only: HF_TOKEN to Hugging Face, CIVITAI_TOKEN to civitai."""
        variable = self._token_variable(url)
        token = variable and self.tokens.get(variable)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _check_response(self, response: requests.Response, input_name: str, reference: str) -> None:
        """Before the body: an error status, or a file that names itself as pickled weights."""
        if response.status_code in (401, 403):
            variable = self._token_variable(response.url)
            hint = f"; set {variable}" if variable else ""
            status = response.status_code
            raise ValueError(f"{input_name}: {reference} needs a login ({status}){hint}")
        response.raise_for_status()
        disposition = DISPOSITION_NAME.search(response.headers.get("Content-Disposition", ""))
        if disposition:
            name = unquote(disposition[1].strip())
            if name.lower().endswith(PICKLE_SUFFIXES):
                raise ValueError(
                    f"{input_name}: {reference} serves {name}, pickled weights, which are never "
                    "loaded; choose its .safetensors file"
                )
            print(f"{input_name}: {reference} is {name}")

    def _evict(self, keep: str) -> None:
        """Drop least recently used files until the cache fits its size bound (never `keep`,
        the file in use now)."""
        by_age = sorted(self.index.items(), key=lambda item: item[1]["used"])
        total = sum({e["sha256"]: e["size"] for _, e in by_age}.values())
        for reference, entry in by_age:
            if total <= self.max_bytes:
                break
            if entry["sha256"] == keep:
                continue
            del self.index[reference]
            if all(e["sha256"] != entry["sha256"] for e in self.index.values()):
                self._path(entry["sha256"], entry.get("suffix")).unlink(missing_ok=True)
                total -= entry["size"]
        self._save_index()

    def _save_index(self) -> None:
        self.index_path.write_text(json.dumps(self.index, indent=1))


def _content_length(response: requests.Response) -> int:
    """The announced size, 0 when there is none (or it is not a number)."""
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else 0
