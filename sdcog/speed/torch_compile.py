"""torch.compile for the UNets: on by default on CUDA, compiled once per GPU type, loaded at start.

SDCOG_COMPILE: unset, torch.compile's default mode on CUDA and nothing on a CPU; 0 nothing; 1 the
default mode; or a mode's name (reduce-overhead adds CUDA graphs, max-autotune searches longer).
SDCOG_COMPILE_SCOPE: full (the default), or regional: only the UNets' repeated transformer blocks,
diffusers' regional compilation (tiny SD on a CPU: 10 s to compile instead of 31 s, but no faster
than eager, where the full compile denoises in 0.82x the eager time).

At setup the UNets (base and refiner) are compiled and warmed up at the native size, so the first
prediction is not the slow one. Inductor's folder (generated code, compiled kernels, its graph
caches) is then saved in the compile cache folder, under a name made of everything the code
depends on: the UNets' configs and dtype, the mode, size and fast path, the device, torch and
diffusers. A later start that finds it compiles from a copy in a fraction of the time (tiny SD on
a CPU: 4 s instead of 31 s), so run setup once on the GPU type you deploy to and ship the folder
in the image (docs/speed.md).

Each setup compiles in a temporary inductor folder of its own, so two processes compiling at once
never read each other's half-written files (a truncated .so in a shared folder once failed a
setup), and the saved folder appears whole or not at all (a rename). A compile from a saved
folder that fails is tried again from scratch, and the new folder replaces the old; a compile
that fails from scratch leaves the UNets eager: setup goes on, with a log line.

Per request: a plain request runs the compiled code where its shapes were compiled and the eager
UNet for other sizes or batch sizes (never a compile inside a request); a request that patches
the UNet for itself (LoRAs, DeepCache, IP-Adapter) runs it eagerly.
"""

import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import diffusers
import torch
from diffusers import DiffusionPipeline


def mode(value: str | None = None, cuda: bool | None = None) -> str | None:
    """SDCOG_COMPILE's value as a torch.compile mode (None: not compiled); `cuda` says whether
    the UNets run on CUDA (default: whether CUDA is available)."""
    value = (value or "").strip()
    if value == "":
        return "default" if (torch.cuda.is_available() if cuda is None else cuda) else None
    if value == "0":
        return None
    return "default" if value == "1" else value


SCOPES = ("full", "regional")


def scope(value: str | None = None) -> str:
    """SDCOG_COMPILE_SCOPE's value: full (the default) or regional; others are refused."""
    value = (value or "full").strip()
    if value not in SCOPES:
        raise ValueError(f"SDCOG_COMPILE_SCOPE: {value!r}; allowed: {', '.join(SCOPES)}")
    return value


def snapshot_path(
    folder: Path,
    pipes: list[DiffusionPipeline],
    chosen: str,
    size: int,
    fast_path: tuple[str, ...],
    regional: bool,
) -> Path:
    """The saved inductor folder for these UNets compiled this way, on this device and these
    versions."""
    device = pipes[0].device
    if device.type == "cuda":
        machine = [torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)]
    else:
        machine = [platform.machine(), platform.processor()]
    # The architecture, not where its files lie: the same build mounted elsewhere (cog predict
    # mounts the project at /src, as the image has it) finds its folder.
    unets = [{k: v for k, v in pipe.unet.config.items() if k != "_name_or_path"} for pipe in pipes]
    key = {
        "unets": unets, "dtype": str(pipes[0].dtype),
        "mode": chosen, "size": size, "fast_path": sorted(fast_path), "scope": SCOPES[regional],
        "device": machine, "torch": torch.__version__, "diffusers": diffusers.__version__,
    }  # fmt: skip
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return folder / f"unets-{SCOPES[regional]}-{chosen}-{size}-{digest[:16]}"


def compile_unets(
    base: DiffusionPipeline,
    refiner: DiffusionPipeline | None,
    size: int,
    chosen: str | None,
    cache_folder: Path,
    fast_path: tuple[str, ...],
    regional: bool = False,
) -> None:
    """Compile the base's (and refiner's) UNet in place in mode `chosen` (None: leave them),
    whole or (regional) only its repeated transformer blocks, and warm each up at the native
    size, from the saved inductor folder in cache_folder if there is one, else from scratch
    (saving the folder)."""
    if chosen is None:
        return
    # Two steps with guidance at the native size: the shapes a default request uses. The
    # refiner (image to image) starts from latents of that size.
    warm_ups = [(base, {"width": size, "height": size})]
    if refiner is not None:
        shape = (1, refiner.vae.config.latent_channels, size // 8, size // 8)
        latents = torch.zeros(shape, device=refiner.device, dtype=refiner.dtype)
        warm_ups.append((refiner, {"image": latents, "strength": 1.0}))
    pipes = [pipe for pipe, _ in warm_ups]
    snapshot = snapshot_path(cache_folder, pipes, chosen, size, fast_path, regional)
    saved = snapshot.is_dir()
    for source in [snapshot, None] if saved else [None]:
        try:
            _compile(warm_ups, chosen, regional, source, snapshot, replace_saved=saved)
        except Exception as e:  # whatever went wrong, the eager UNets still serve
            for module in (module for pipe in pipes for module in pipe.unet.modules()):
                module._compiled_call_impl = None  # what nn.Module.compile set
            torch._dynamo.reset()
            reason = f"{type(e).__name__}: {(str(e).strip() or '-').splitlines()[0]}"[:300]
            if source is not None:
                print(f"compile from {snapshot} failed ({reason}), compiling from scratch")
                continue
            print(f"compile failed, the UNets run eagerly ({reason})")
            return
        origin = f"from {snapshot}" if source else "from scratch"
        what = "the UNets' transformer blocks" if regional else "the UNets"
        print(f"compiled {what} ({chosen}) {origin}, warmed up at {size}x{size}")
        return


def _compile(
    warm_ups: list[tuple[DiffusionPipeline, dict]],
    chosen: str,
    regional: bool,
    source: Path | None,
    snapshot: Path,
    replace_saved: bool,
) -> None:
    """Compile and warm up in a temporary inductor folder, a copy of `source` if given; save
    the folder as `snapshot` when compiled from scratch."""
    # Inductor's own switch of its folder (it sets TORCHINDUCTOR_CACHE_DIR for the block). A
    # private module: imported here, so a torch without it fails the compile, not the import.
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    with tempfile.TemporaryDirectory(prefix="sdcog-inductor-") as workdir:
        inductor = Path(workdir) / "inductor"
        if source is not None:
            shutil.copytree(source, inductor)
        # The compiled code stays loaded in memory once the folder is gone.
        with temporary_cache_dir(str(inductor)):
            for pipe, inputs in warm_ups:
                if regional:  # diffusers' regional compilation: shorter compiles
                    pipe.unet.compile_repeated_blocks(mode=chosen)
                else:
                    pipe.unet.compile(mode=chosen)
                pipe("warm-up", num_inference_steps=2, output_type="latent", **inputs)
        if source is None:
            _save(inductor, snapshot, replace_saved)


def _save(inductor: Path, snapshot: Path, replace_saved: bool) -> None:
    """Publish the inductor folder as `snapshot` whole or not at all (a rename); a saved one that
    failed (replace_saved) goes first. A folder that cannot be written (a read-only image) only
    costs the next start a full compile."""
    part = snapshot.with_name(f"{snapshot.name}.{os.getpid()}.part")
    try:
        shutil.copytree(inductor, part)
        if replace_saved and snapshot.is_dir():
            broken = snapshot.with_name(f"{snapshot.name}.{os.getpid()}.broken")
            snapshot.rename(broken)
            shutil.rmtree(broken)
        try:
            part.rename(snapshot)
        except OSError:
            if not snapshot.is_dir():
                raise  # else another process saved one meanwhile: theirs stays
    except OSError as e:
        print(f"compile cache not saved ({e}): the next start compiles from scratch")
    finally:
        shutil.rmtree(part, ignore_errors=True)


@contextmanager
def stance(plain: bool, chosen: str | None) -> Iterator[None]:
    """How a request runs the UNets compiled in mode `chosen` (None: nothing is compiled): a
    plain request compiled where its shapes were compiled, eagerly elsewhere; the others
    eagerly."""
    if chosen is None:
        yield
        return
    with torch.compiler.set_stance("eager_on_recompile" if plain else "force_eager"):
        yield
