"""script/bench-swap: what swapping a request's base_model costs, per tier, on full-size random
weights (script/tiny-weights --full-size DIR writes them): the disk tier (loading the diffusers
folder onto the device, with the OS page cache dropped and warm, until every weight has been
read) against the RAM tier (a model kept in CPU RAM copied to the device; on a CPU the two tiers
are one and this costs nothing).

    script/bench-swap WEIGHTS_DIR [--runs 3]
"""

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..common import families
from ..models.pipelines import Pipelines, device_and_dtype
from .bench_paths import sync


def drop_page_cache(folder: Path) -> None:
    """Ask the kernel to forget the folder's files (clean pages: no root needed), so the next
    load reads the disk."""
    for path in folder.rglob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(action: Callable[[], object], runs: int, before: Callable[[], None] = lambda: None):
    """Seconds per run (median, min, max), `before` untimed ahead of each."""
    seconds = []
    for _ in range(runs):
        before()
        sync()
        start = time.perf_counter()
        action()
        sync()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), min(seconds), max(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", type=Path, help="a weights folder (its base/ is loaded)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    folder = args.weights / "base"
    vae = args.weights / "vae" if (args.weights / "vae/config.json").exists() else None
    device, dtype = device_and_dtype()
    size = sum(p.stat().st_size for f in (folder, vae) if f for p in f.rglob("*.safetensors"))
    print(f"model: {folder} ({size / 1e9:.2f} GB of safetensors), device {device}, {dtype}")
    family = families.of_folder(folder, "WEIGHTS_DIR", str(folder))

    def load() -> Pipelines:
        pipelines = Pipelines.from_folder(folder, family, vae=vae)
        # On a CPU safetensors are memory-mapped: read one value per 4 KiB page so that the
        # time includes reading the weights, as the first request would.
        with torch.no_grad():
            for module in pipelines.own_modules():
                for p in module.parameters():
                    p.view(-1)[:: 4096 // p.element_size()].sum().item()
        return pipelines

    def uncached() -> None:
        for f in (folder, vae):
            if f:
                drop_page_cache(f)

    cold = timed(load, args.runs, uncached)
    warm = timed(load, args.runs)
    loaded = load()
    nbytes = sum(p.numel() * p.element_size() for m in loaded.own_modules() for p in m.parameters())
    rows = [("disk -> device, page cache dropped", cold), ("disk -> device, page cache warm", warm)]
    if device == "cuda":

        def to(target: str) -> None:
            for module in loaded.own_modules():
                module.to(target)

        rows.append(("CPU RAM -> device", timed(lambda: to("cuda"), args.runs, lambda: to("cpu"))))
        rows.append(("device -> CPU RAM", timed(lambda: to("cpu"), args.runs, lambda: to("cuda"))))
    else:
        print("CPU: the RAM tier is the device; a warm swap is a pointer switch (no copy)")
    print(f"weights in memory: {nbytes / 1e9:.2f} GB")
    print(f"{'path':40} {'median s':>9} {'min':>7} {'max':>7}")
    for name, (median, low, high) in rows:
        print(f"{name:40} {median:9.3f} {low:7.3f} {high:7.3f}")
    if device == "cuda":
        ram = rows[2][1][0]
        print(f"ratio disk (cache dropped) / RAM tier: {cold[0] / ram:.1f}x")
