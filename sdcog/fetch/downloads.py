"""The cache of per-prediction adapter files (LoRAs, embeddings, ControlNet models, Replicate
fine-tunes): safetensors only, each checked before it is kept, least recently used out first,
keyed by reference and stored by content hash (the same file under two references is kept once).

Where a reference's file is and how it comes down (netguard, one deadline, a cancel, size and
tokens) is sdcog/fetch/sources.py. The limits and endpoints are settings.
"""

import functools
import hashlib
import json
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..security.filechecks import CHECKS
from ..serving.settings import Settings
from .references import Reference
from .sources import Sources


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
        self.sources = Sources(
            settings,
            endpoint or settings.hf_endpoint,
            civitai or settings.civitai_endpoint,
            max_file_bytes or settings.adapter_max_bytes,
            timeout_s or settings.adapter_timeout_s,
            size_setting,
            timeout_setting,
        )
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "index.json"
        # reference -> {"sha256", "size", "used"}
        self.index: dict[str, dict] = (
            json.loads(self.index_path.read_text()) if self.index_path.exists() else {}
        )

    def fetch(
        self,
        reference: Reference,
        suffix: str = ".safetensors",
        stop: threading.Event | None = None,
    ) -> Path:
        """The local file for a reference: from the cache, or downloaded, checked and cached.
        `suffix` says what it must be (CHECKS): .safetensors, .json or .tar. `stop`, once set,
        ends a download at once (PredictionCancelledError)."""
        url = functools.partial(self.sources.url, reference, stop)
        return self._fetched(reference.text, url, suffix, reference.input_name, stop)

    def derived(self, key: str, make: Callable[[], bytes], input_name: str) -> Path:
        """A safetensors file made from cached ones (a converted LoRA), cached under `key`."""

        def write(part: Path) -> str:
            data = make()
            part.write_bytes(data)
            return hashlib.sha256(data).hexdigest()

        return self._cached(key, ".safetensors", input_name, write)

    def fetch_model(self, reference: Reference, stop: threading.Event | None = None) -> Path:
        """A diffusers-format model (a ControlNet) as a folder: its config.json and its
        safetensors weights, each fetched and cached like an adapter file."""
        # Resolved at most once, and only when a file is not in the cache yet.
        urls = functools.cache(lambda: self.sources.model_urls(reference, stop))
        input_name, key = reference.input_name, reference.text
        weights = self._fetched(key, lambda: urls()["weights"], ".safetensors", input_name, stop)
        config_key = f"{key}#config.json"
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
            key,
            suffix,
            input_name,
            lambda part: self.sources.download(url(), part, input_name, key, stop),
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
