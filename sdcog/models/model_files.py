"""The disk tier of per-request models (base_model, vae): each reference's files as a diffusers
folder under MODEL_CACHE_DIR, at most MODEL_CACHE_GB in all (model_cache.py: least recently used
out first, one lock per model across processes, nothing left of a failed download).

A Hugging Face repository comes through huggingface_hub (HF_ENDPOINT, HF_TOKEN, revisions) as
one guarded download (hub_http.py): every request and redirect hop checked by netguard, one
deadline (MODEL_TIMEOUT_S), stopped at once by a cancel, MODEL_CACHE_GB at most. Its configs come
first, so that `check` can refuse a model that does not fit the request before its weights are
fetched; then only the safetensors files the pipeline loads (hub_files.py; fp16 variants on CUDA
when every component has one). A single-file checkpoint (URL or civitai AIR id) comes through
the adapter downloads (netguard, tokens, safetensors checks, the same two bounds), is converted
once (sdcog/models/checkpoints.py) and the download dropped. The build's pinned weights live in the
weights folder, outside this cache, and are never evicted.
"""

import hashlib
import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import errors as hub_errors
from huggingface_hub.utils import disable_progress_bars

from ..common import families
from ..fetch.downloads import AdapterCache
from ..fetch.references import Reference
from ..request.model_choice import ModelReference
from ..security import hub_http, transfer
from ..serving.settings import Settings
from . import checkpoints, hub_files
from .model_cache import WORK_SUFFIX, ModelCache
from .pipelines import COMPONENTS

disable_progress_bars()  # one line per file in the prediction's logs, not a bar per chunk
MARKER = ".complete"  # a whole folder: {"reference", "variant"}
CONFIG_LIMIT = hub_http.Limit(16 << 20, "16 MiB, the bound on a config or tokenizer file")


class ModelFiles:
    def __init__(self, settings: Settings, weights_dir: Path, dtype: torch.dtype) -> None:
        self.root, self.max_bytes = settings.model_cache_dir, settings.model_cache_bytes
        self.weights_dir, self.dtype = weights_dir, dtype
        self.endpoint = settings.hf_endpoint.rstrip("/")
        self.token = settings.tokens.get("HF_TOKEN") or False  # False: never a stored login
        self.timeout_s = settings.model_timeout_s
        self.allowed, self.trusted = settings.private_networks, settings.trusted_origins
        self.total = hub_http.Limit(
            self.max_bytes, f"MODEL_CACHE_GB, {self.max_bytes / 1024**3:.3g} GB"
        )
        self.cache = ModelCache(self.root, self.max_bytes)
        # Single files: one at a time, as large as the whole cache may be.
        self.downloads = AdapterCache(
            settings, root=self.root / "downloads", max_bytes=max(self.max_bytes, 1),
            max_file_bytes=max(self.max_bytes, 1), timeout_s=self.timeout_s,
            size_setting="MODEL_CACHE_GB", timeout_setting="MODEL_TIMEOUT_S",
        )  # fmt: skip
        hub_http.install()

    def folder(
        self,
        reference: ModelReference,
        check: Callable[[Path], None],
        stop: threading.Event | None,
        vae_of: Path | None = None,
    ) -> Path:
        """The reference's diffusers folder, from the cache or fetched. `check(folder)` sees its
        configs before any weights are fetched (single files: after conversion, before loading).
        `vae_of`: for a vae, the vae/ folder of the model it is for (a single file's config)."""
        key = f"{reference.input_name}:{reference.text}"
        if vae_of is not None and reference.kind != "hub":  # converted with that model's config
            key += f"#{hashlib.sha256(str(vae_of).encode()).hexdigest()[:12]}"
        name = hashlib.sha256(key.encode()).hexdigest()[:24]
        with self.cache.locked(name, stop) as target:
            if (target / MARKER).exists():
                print(f"{reference.input_name}: {reference.name} from the disk cache")
                check(target)
            else:
                self._fetch(reference, target, check, stop, vae_of)
            self.cache.record(key, target)
        return target

    def _fetch(
        self,
        reference: ModelReference,
        target: Path,
        check: Callable[[Path], None],
        stop: threading.Event | None,
        vae_of: Path | None,
    ) -> None:
        """Into a work folder, renamed to `target` once whole; a download refused, failed or
        cancelled leaves nothing behind."""
        work = target.with_name(target.name + WORK_SUFFIX)
        shutil.rmtree(work, ignore_errors=True)  # what a killed server left
        try:
            digest = None  # a single file's SHA-256 (civitai's hashes are made of it)
            if reference.kind == "hub":
                variant = self._hub(reference, work, check, stop)
            else:
                variant = None
                digest = self._single_file(reference, work, check, stop, vae_of)
            shutil.rmtree(work / ".cache", ignore_errors=True)  # huggingface_hub's records
            (work / MARKER).write_text(json.dumps(
                {"reference": reference.text, "variant": variant, "sha256": digest}
            ))  # fmt: skip
            shutil.rmtree(target, ignore_errors=True)
            work.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _hub(
        self,
        reference: ModelReference,
        work: Path,
        check: Callable[[Path], None],
        stop: threading.Event | None,
    ) -> str | None:
        """Configs, check, weights; the weights' variant ("fp16" or None). All of it is one
        guarded download (hub_http): one deadline, every hop checked, MODEL_CACHE_GB at most."""
        what, name = reference.input_name, reference.name
        download = transfer.Download(
            what, self.timeout_s, stop, self.allowed, self.trusted, "MODEL_TIMEOUT_S", name
        )
        with download, hub_http.guarded(download, self.total, CONFIG_LIMIT) as guard:
            info = self._hub_call(reference, lambda api: api.model_info(
                reference.repo, revision=reference.revision, files_metadata=True
            ))  # fmt: skip
            sizes, commit = hub_files.listing(info, reference)
            files = list(sizes)
            vae_root = what == "vae" and "config.json" in files
            folders = [""] if vae_root else ["vae"] if what == "vae" else list(COMPONENTS)
            configs = [f for f in files if hub_files.is_config(f, folders, what)]
            self._make_room(reference, guard.received, [sizes[f] for f in configs])
            print(f"{what}: {name} at {commit[:12]}: fetching its configs")
            self._hub_files(reference, commit, configs, work)
            if vae_root:  # a VAE repository: laid out as a pipeline's vae/ folder
                work_vae = work / "vae"
                work_vae.mkdir(exist_ok=True)
                (work / "config.json").replace(work_vae / "config.json")
            check(work)
            weights, variant = hub_files.weight_files(
                files, work, folders, self.dtype == torch.float16, reference
            )
            hub_files.check_files(reference, configs + weights)
            self._make_room(reference, guard.received, [sizes[f] for f in weights])
            guard.per_file = self.total  # a weight file may take what the model may
            print(f"{what}: {name}: downloading {len(weights)} weight files")
            self._hub_files(reference, commit, weights, work)
        if vae_root:
            for path in weights:
                (work / path).replace(work / "vae" / path)
        return variant

    def _make_room(self, reference: ModelReference, received: int, sizes: list[int | None]) -> None:
        """Before the configs, and again before the weights: refuse a model larger than the
        whole cache, from the sizes the hub lists (the download is bounded as it streams too,
        for a listing that says less), and make room for what comes."""
        if None in sizes:
            return  # a listing without sizes: bounded while it streams, evicted after
        incoming = received + sum(sizes)
        if incoming > self.max_bytes:
            raise ValueError(
                f"{reference.input_name}: {reference.name} is {incoming / 1e9:.2f} GB, more "
                f"than the model cache may hold ({self.total.name})"
            )
        self.cache.make_room(incoming)

    def _hub_files(
        self, reference: ModelReference, commit: str, files: list[str], work: Path
    ) -> None:
        hub_files.check_files(reference, files)
        for path in files:
            self._hub_call(reference, lambda api, path=path: hf_hub_download(
                reference.repo, path, revision=commit, local_dir=work, endpoint=self.endpoint,
                token=self.token,
            ))  # fmt: skip

    def _hub_call(self, reference: ModelReference, call: Callable[[HfApi], Any]) -> Any:
        """call(api), inside the guarded download (which a cancel ends at once); what
        huggingface_hub raises becomes a ValueError naming the input."""
        what, name = reference.input_name, reference.name
        try:
            return call(HfApi(endpoint=self.endpoint, token=self.token))
        except transfer.DownloadError:
            raise
        except hub_errors.GatedRepoError:
            raise ValueError(f"{what}: {name} is gated; accept its terms, set HF_TOKEN") from None
        except hub_errors.RepositoryNotFoundError:
            raise ValueError(
                f"{what}: no Hugging Face repository {name} (a private one needs HF_TOKEN)"
            ) from None
        except hub_errors.RevisionNotFoundError:
            raise ValueError(f"{what}: {name} has no revision {reference.revision}") from None
        except (hub_errors.HfHubHTTPError, httpx2.HTTPError, httpx2.InvalidURL, OSError,
                ValueError) as e:  # fmt: skip
            raise ValueError(
                f"{what}: could not fetch {name} from {self.endpoint}: {str(e)[:300]}"
            ) from None

    def _single_file(
        self,
        reference: ModelReference,
        work: Path,
        check: Callable[[Path], None],
        stop: threading.Event | None,
        vae_of: Path | None,
    ) -> str:
        """Converted into `work`; the file's SHA-256 (the download cache names it by it)."""
        what = reference.input_name
        path = self.downloads.fetch(Reference(reference.text, what, reference.kind), stop=stop)
        try:
            if vae_of is not None:
                print(f"{what}: converting {reference.name} with {vae_of.name}'s config")
                checkpoints.convert_vae(path, vae_of, work / "vae", self.dtype)
            else:
                family = families.of_checkpoint(path, what, reference.name)
                print(f"{what}: {reference.name} is {family}: converting it to diffusers' layout")
                checkpoints.convert(path, family, self.weights_dir, work, self.dtype)
        except ValueError:
            raise
        except Exception as e:  # what diffusers makes of keys and shapes it does not expect
            raise ValueError(
                f"{what}: {reference.name} could not be converted: {type(e).__name__}: "
                f"{str(e)[:300]}"
            ) from None
        finally:
            self.downloads.forget(reference.text)  # the converted folder is what is kept
        check(work)
        return path.stem


def checkpoint_sha256(folder: Path) -> str | None:
    """The SHA-256 of the single file a folder was converted from, or None (a repository's)."""
    marker = folder / MARKER
    return json.loads(marker.read_text()).get("sha256") if marker.exists() else None


def variant(folder: Path) -> str | None:
    """The weights' variant ("fp16") a complete folder was fetched with, or None."""
    return json.loads((folder / MARKER).read_text()).get("variant")
