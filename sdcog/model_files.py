"""The disk tier of per-request models (base_model, vae): each reference's files as a diffusers
folder under MODEL_CACHE_DIR, at most MODEL_CACHE_GB in all, least recently used out first.

A Hugging Face repository comes through huggingface_hub (HF_ENDPOINT, HF_TOKEN, revisions,
resumable downloads): its configs first, so that `check` can refuse a model that does not fit the
request before its weights are fetched; then only the safetensors files the pipeline loads (fp16
variants on CUDA when every component has one). A component with pickled weights only is refused.
A single-file checkpoint (URL or civitai AIR id) comes through the adapter downloads (netguard,
tokens, safetensors checks), is converted once (sdcog/checkpoints.py) and the download dropped.
One lock per reference: two requests (or processes) for one model download it once. The build's
pinned weights live in the weights folder, outside this cache, and are never evicted.
"""

import hashlib
import json
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import torch
from filelock import FileLock
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import errors as hub_errors
from huggingface_hub.utils import disable_progress_bars

from . import checkpoints, families, runner
from .downloads import AdapterCache
from .filechecks import PICKLE_SUFFIXES
from .models import ModelReference
from .pipelines import COMPONENTS
from .settings import Settings

disable_progress_bars()  # one line per file in the prediction's logs, not a bar per chunk
# Weights and the index of sharded weights, with diffusers' fp16 variant marker or without.
WEIGHTS = re.compile(
    r".+?(?P<fp16>\.fp16)?\.safetensors|.+\.safetensors\.index(?P<fp16i>\.fp16)?\.json"
)
WORK_SUFFIX = ".part"
MARKER = ".complete"  # a whole folder: {"reference", "variant"}


class ModelFiles:
    def __init__(self, settings: Settings, weights_dir: Path, dtype: torch.dtype) -> None:
        self.root, self.max_bytes = settings.model_cache_dir, settings.model_cache_bytes
        self.weights_dir, self.dtype = weights_dir, dtype
        self.endpoint = settings.hf_endpoint.rstrip("/")
        self.token = settings.tokens.get("HF_TOKEN") or False  # False: never a stored login
        self.timeout_s = settings.model_timeout_s
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        # Single files: one at a time, as large as the whole cache may be.
        self.downloads = AdapterCache(
            settings, root=self.root / "downloads", max_bytes=max(self.max_bytes, 1),
            max_file_bytes=max(self.max_bytes, 1), timeout_s=self.timeout_s,
        )  # fmt: skip
        self.index_path = self.root / "index.json"

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
        target = self.root / "models" / name
        with FileLock(self.root / "locks" / f"{name}.lock"):
            if (target / MARKER).exists():
                print(f"{reference.input_name}: {reference.name} from the disk cache")
                check(target)
            else:
                self._fetch(reference, target, check, stop, vae_of)
            self._record(key, target)
        return target

    def _fetch(
        self,
        reference: ModelReference,
        target: Path,
        check: Callable[[Path], None],
        stop: threading.Event | None,
        vae_of: Path | None,
    ) -> None:
        work = target.with_name(target.name + WORK_SUFFIX)  # a hub download resumes from here
        variant = None
        if reference.kind == "hub":
            variant = self._hub(reference, work, check, stop)
        else:
            if work.exists():
                shutil.rmtree(work)
            self._single_file(reference, work, check, stop, vae_of)
        shutil.rmtree(work / ".cache", ignore_errors=True)  # huggingface_hub's resume records
        (work / MARKER).write_text(json.dumps({"reference": reference.text, "variant": variant}))
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)

    def _hub(
        self,
        reference: ModelReference,
        work: Path,
        check: Callable[[Path], None],
        stop: threading.Event | None,
    ) -> str | None:
        """Configs, check, weights; the weights' variant ("fp16" or None)."""
        what, name = reference.input_name, reference.name
        info = self._hub_call(reference, stop, lambda api: api.model_info(
            reference.repo, revision=reference.revision, timeout=self.timeout_s
        ))  # fmt: skip
        files = [s.rfilename for s in info.siblings or []]
        vae_root = reference.input_name == "vae" and "config.json" in files
        folders = [""] if vae_root else ["vae"] if what == "vae" else list(COMPONENTS)
        configs = [f for f in files if _is_config(f, folders, what)]
        print(f"{what}: {name} at {info.sha[:12]}: fetching its configs")
        self._hub_files(reference, info.sha, configs, work, stop)
        if vae_root:  # a VAE repository: laid out as a pipeline's vae/ folder
            work_vae = work / "vae"
            work_vae.mkdir(exist_ok=True)
            (work / "config.json").replace(work_vae / "config.json")
        check(work)
        weights, variant = _weight_files(
            files, work, folders, self.dtype == torch.float16, reference
        )
        print(f"{what}: {name}: downloading {len(weights)} weight files")
        self._hub_files(reference, info.sha, weights, work, stop)
        if vae_root:
            for path in weights:
                (work / path).replace(work / "vae" / path)
        return variant

    def _hub_files(
        self, reference: ModelReference, commit: str, files: list[str], work: Path,
        stop: threading.Event | None,
    ) -> None:  # fmt: skip
        for path in files:
            self._hub_call(reference, stop, lambda api, path=path: hf_hub_download(
                reference.repo, path, revision=commit, local_dir=work, endpoint=self.endpoint,
                token=self.token, etag_timeout=self.timeout_s,
            ))  # fmt: skip

    def _hub_call(
        self, reference: ModelReference, stop: threading.Event | None, call: Callable[[HfApi], Any]
    ) -> Any:
        """call(api) in a thread of its own, so that a cancelled prediction stops waiting at
        once (the download goes on and resumes the next time); hub errors name the input."""
        api = HfApi(endpoint=self.endpoint, token=self.token)
        what, name = reference.input_name, reference.name
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["value"] = call(api)
            except BaseException as e:  # handed to the prediction's thread below
                result["error"] = e

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
            runner.raise_if_set(stop)
        error = result.get("error")
        if isinstance(error, hub_errors.GatedRepoError):
            raise ValueError(f"{what}: {name} is gated; accept its terms and set HF_TOKEN")
        if isinstance(error, hub_errors.RepositoryNotFoundError):
            raise ValueError(
                f"{what}: no Hugging Face repository {name} (a private one needs HF_TOKEN)"
            )
        if isinstance(error, hub_errors.RevisionNotFoundError):
            raise ValueError(f"{what}: {name} has no revision {reference.revision}")
        if isinstance(error, hub_errors.HfHubHTTPError | httpx2.HTTPError | OSError):
            raise ValueError(f"{what}: could not fetch {name} from {self.endpoint}: {error}")
        if error is not None:
            raise error
        return result["value"]

    def _single_file(
        self,
        reference: ModelReference,
        work: Path,
        check: Callable[[Path], None],
        stop: threading.Event | None,
        vae_of: Path | None,
    ) -> None:
        what = reference.input_name
        path = self.downloads.fetch(reference.text, what, ".safetensors", stop)
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

    def _record(self, key: str, target: Path) -> None:
        """`key` used now; least recently used folders out until the cache fits (never this)."""
        with FileLock(self.root / "locks" / "index.lock"):
            index = json.loads(self.index_path.read_text()) if self.index_path.exists() else {}
            size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
            index[key] = {"folder": target.name, "bytes": size, "used": time.time()}
            total = sum(entry["bytes"] for entry in index.values())
            for old, entry in sorted(index.items(), key=lambda item: item[1]["used"]):
                if total <= self.max_bytes:
                    break
                if old == key:
                    continue
                print(f"model cache: evicting {old} ({entry['bytes'] / 1e9:.2f} GB)")
                shutil.rmtree(self.root / "models" / entry["folder"], ignore_errors=True)
                total -= entry.pop("bytes")
                del index[old]
            self.index_path.write_text(json.dumps(index, indent=1))


def variant(folder: Path) -> str | None:
    """The weights' variant ("fp16") a complete folder was fetched with, or None."""
    return json.loads((folder / MARKER).read_text()).get("variant")


def _is_config(path: str, folders: list[str], input_name: str) -> bool:
    """model_index.json and each component's configs and tokenizer files (JSON and text)."""
    if input_name == "vae":
        return path in ("config.json", "vae/config.json")
    folder, _, name = path.rpartition("/")
    if not folder:
        return name == "model_index.json"
    return (
        "/" not in folder
        and ".index" not in name
        and name.endswith((".json", ".txt"))
        and (folder in folders or folder.startswith(("tokenizer", "scheduler")))
    )


def _weight_files(
    files: list[str], work: Path, folders: list[str], fp16: bool, reference: ModelReference
) -> tuple[list[str], str | None]:
    """The safetensors weights of each component there is a config of, and their variant: fp16
    when `fp16` and every component has it, else full precision. A component with pickled
    weights only is refused, naming the input."""
    chosen: list[dict[bool, list[str]]] = []
    for component in folders:
        if component and not (work / component / "config.json").exists():
            continue  # a component the pipeline does not have
        prefix = f"{component}/" if component else ""
        own = [f for f in files if f.startswith(prefix) and "/" not in f[len(prefix) :]]
        by_variant: dict[bool, list[str]] = {False: [], True: []}
        for path in own:
            if match := WEIGHTS.fullmatch(path[len(prefix) :]):
                by_variant[bool(match["fp16"] or match["fp16i"])].append(path)
        if not by_variant[False] and not by_variant[True]:
            pickled = [f for f in own if f.lower().endswith(PICKLE_SUFFIXES)]
            found = f"only pickled weights ({', '.join(pickled)})" if pickled else "no weights"
            raise ValueError(
                f"{reference.input_name}: {reference.name}: its {component or 'VAE'} has "
                f"{found}; only .safetensors files are loaded"
            )
        chosen.append(by_variant)
    has = {precision: all(v[precision] for v in chosen) for precision in (False, True)}
    variant = has[True] and (fp16 or not has[False])
    files = [f for v in chosen for f in (v[variant] or v[not variant])]
    return files, "fp16" if variant else None
