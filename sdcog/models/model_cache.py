"""The disk tier's bookkeeping: one folder per model under MODEL_CACHE_DIR/models, an index of the
complete ones (when each was last used, how large it is), and at most MODEL_CACHE_GB of them,
least recently used out first. Everything under models/ counts: a download under way (its lock
held) by its bytes so far, and a folder nobody holds the lock of and the index does not know
(what a killed server left) is removed. One lock per model, across processes too."""

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ..common import cancel

WORK_SUFFIX = ".part"  # a folder being downloaded: renamed without it once whole


class ModelCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = root, max_bytes
        self.models, self.locks = root / "models", root / "locks"
        self.models.mkdir(parents=True, exist_ok=True)
        self.locks.mkdir(exist_ok=True)
        self.index_path = root / "index.json"

    @contextmanager
    def locked(self, name: str, stop: threading.Event | None) -> Iterator[Path]:
        """Model `name`'s folder, its lock held (another request or process may be downloading
        it): waited for until the prediction is cancelled."""
        lock = FileLock(self.locks / f"{name}.lock")
        while True:
            try:
                lock.acquire(timeout=0.2)
                break
            except Timeout:
                cancel.raise_if_set(stop)
        try:
            yield self.models / name
        finally:
            lock.release()

    def record(self, key: str, folder: Path) -> None:
        """`key`'s folder used now; least recently used folders out until the cache fits (never
        this one)."""
        with self._index() as index:
            index[key] = {"folder": folder.name, "bytes": size(folder), "used": time.time()}
            self._evict(index, keep=key, incoming=0)

    def make_room(self, incoming: int) -> None:
        """Least recently used folders out until `incoming` bytes more fit."""
        with self._index() as index:
            self._evict(index, keep=None, incoming=incoming)

    @contextmanager
    def _index(self) -> Iterator[dict]:
        """key -> {folder, bytes, used}, saved after the with-block."""
        with FileLock(self.locks / "index.lock"):
            index = json.loads(self.index_path.read_text()) if self.index_path.exists() else {}
            yield index
            self.index_path.write_text(json.dumps(index, indent=1))

    def _evict(self, index: dict, keep: str | None, incoming: int) -> None:
        known = {entry["folder"] for entry in index.values()}
        total = incoming + sum(entry["bytes"] for entry in index.values())
        total += sum(self._unindexed(f) for f in self.models.iterdir() if f.name not in known)
        for old, entry in sorted(index.items(), key=lambda item: item[1]["used"]):
            if total <= self.max_bytes:
                break
            if old == keep:
                continue
            print(f"model cache: evicting {old} ({entry['bytes'] / 1e9:.2f} GB)")
            shutil.rmtree(self.models / entry["folder"], ignore_errors=True)
            total -= entry["bytes"]
            del index[old]

    def _unindexed(self, folder: Path) -> int:
        """A folder the index does not hold: its bytes while a download holds its lock, else
        removed (0)."""
        lock = FileLock(self.locks / f"{folder.name.removesuffix(WORK_SUFFIX)}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return size(folder)
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            lock.release()
        return 0


def size(folder: Path) -> int:
    """The bytes of the files under `folder`, as it is now (another process may be renaming or
    removing what is in it)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, name)).st_size
    return total
