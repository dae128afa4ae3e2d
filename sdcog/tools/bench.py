"""script/bench: seconds per image for a plain diffusers call, our Generator in-process and a
prediction through Cog's server, on the same weights, seed and inputs, in one run.

Each path runs its cases (warm-up, then N timed runs) and is freed before the next loads, so the
memory peak is one model's. Ratios are to the plain diffusers call measured in this same run.
Stage timings are the medians of those our paths report (the Generator's, and the timings line
of each prediction through the server).
"""

import argparse
import gc
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import torch

from ..common.families import of_folder
from ..common.timings import STAGES
from ..models.pipelines import device_and_dtype
from . import bench_paths as paths
from .bench_diffusers import Diffusers
from .cog_server import interrupt_on_hangup


@dataclass
class Result:
    seconds: list[float] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)
    peak_bytes: int = 0
    last: paths.Outcome | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def stage_medians(self) -> dict[str, float]:
        if not self.stages:
            return {}
        return {k: statistics.median(s[k] for s in self.stages) for k in self.stages[0]}


# Named sets of defaults (explicit options still win).
PRESETS = {
    # What Cog's server adds to a prediction: our Generator in-process against the same request
    # through the server, interleaved run by run. On tiny weights the model is bound by dispatch
    # (Python and kernel launches), not arithmetic, as the full-size UNet is on a GPU: a per-step
    # cost of the worker shows there, where on a CPU the arithmetic of a real model would hide it.
    "server-gap": {
        "paths": "generator,server",
        "interleave": True,
        "runs": 10,
        "size": 512,
        "steps": 50,
        "cases": "txt2img,lora,controlnet,deepcache",
    },  # fmt: skip
}


def open_path(setup: paths.Setup, path: str) -> object:
    """A path by name; generator:A+B is our Generator with SDCOG_FAST_PATH=A,B."""
    name, _, fast_path = path.partition(":")
    if name == "generator" and fast_path:
        return paths.Ours(setup, fast_path.replace("+", ","))
    return {"diffusers": Diffusers, "generator": paths.Ours, "server": paths.Served}[name](setup)


def timed(call: paths.Call, result: Result) -> None:
    start = time.perf_counter()
    result.last = call()
    paths.sync()
    result.seconds.append(time.perf_counter() - start)
    if result.last.stages:
        result.stages.append(result.last.stages)


def measure(call: paths.Call, warmup: int, runs: int, pids: list[int] | None) -> Result:
    """Warm-up calls, then timed ones; the memory peak (of `pids`, or this process) is over the
    timed ones."""
    result = Result()
    for _ in range(warmup):
        call()
    paths.reset_peak(pids)
    for _ in range(runs):
        timed(call, result)
    result.peak_bytes = paths.peak(pids)
    return result


def interleaved(runners: dict, cases: list[str], warmup: int, runs: int) -> dict:
    """Every path loaded at once, each round taking one run of every case on every path: a
    machine whose speed drifts (a shared CPU) slows every cell alike. Memory is then only told
    apart for the server."""
    calls = {
        (case, name): call
        for case in cases
        for name, runner in runners.items()
        if (call := runner.call(case))
    }
    for call in calls.values():
        for _ in range(warmup):
            call()
    results: dict[str, dict[str, Result]] = {name: {} for name in runners}
    for case, name in calls:
        results[name][case] = Result()
    for _ in range(runs):
        for (case, name), call in calls.items():
            timed(call, results[name][case])
    for case, name in calls:
        if pids := runners[name].pids():
            results[name][case].peak_bytes = paths.peak(pids)
    return results


def plain_read(weights: Path) -> tuple[float, int]:
    """Seconds and bytes to read every safetensors file the build loads, as plain file reads."""
    start, total = time.perf_counter(), 0
    for path in sorted(weights.rglob("*.safetensors")):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    return time.perf_counter() - start, total


def main(argv: list[str] | None = None) -> None:
    interrupt_on_hangup()
    parser = argparse.ArgumentParser(prog="script/bench", description=__doc__)
    parser.add_argument("weights", type=Path, help="a weights folder (real, tiny or full-size)")
    parser.add_argument("--size", type=int, help="image side (default: the model's native)")
    parser.add_argument("--steps", type=int, default=None, help="default: 50 SD, 30 SDXL")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cases", default=",".join(paths.CASES), help="comma-separated")
    parser.add_argument(
        "--paths", default="diffusers,generator,server",
        help="comma-separated, in order; generator:A+B runs ours with SDCOG_FAST_PATH=A,B "
        "(e.g. generator:none,generator:fused_qkv to measure each optimisation)",
    )  # fmt: skip
    parser.add_argument(
        "--interleave", action="store_true",
        help="load every path at once and take their runs in turn (for machines whose speed "
        "drifts; needs the memory of all paths)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="append the report (markdown) to this file")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS),
        help="server-gap: generator against server, interleaved, 10 runs, 512x512, 50 steps "
        "(on tiny weights: the server's cost where dispatch, not arithmetic, bounds the model)",
    )  # fmt: skip
    args, _ = parser.parse_known_args(argv)
    if args.preset:
        parser.set_defaults(**PRESETS[args.preset])
    args = parser.parse_args(argv)

    family = of_folder(args.weights / "base", "--weights", str(args.weights)).pipeline
    size = args.size or (1024 if family == "sdxl" else 512)
    steps = args.steps or (30 if family == "sdxl" else 50)
    workdir = Path(tempfile.mkdtemp(prefix="sdcog-bench-"))
    setup = paths.Setup(args.weights, workdir, family, size, steps)
    cases = [c for c in args.cases.split(",") if setup.supports(c)]
    chosen = args.paths.split(",")
    read_s, read_bytes = plain_read(args.weights)
    if clocks := paths.read_gpu_clocks():
        setup.clocks.append(clocks)
    results: dict[str, dict[str, Result]] = {}
    setups: dict[str, float] = {}
    runners = {}
    try:
        for name in chosen:
            start = time.perf_counter()
            runner = open_path(setup, name)
            setups[name] = time.perf_counter() - start
            if args.interleave:  # closed by the outer finally, after every path has run
                runners[name] = runner
                continue
            try:
                results[name] = {}
                for case in cases:
                    if call := runner.call(case):
                        results[name][case] = measure(call, args.warmup, args.runs, runner.pids())
            finally:  # a failed path stops its server too
                runner.close()
            del runner
            gc.collect()
            paths.empty_cache()
        if runners:
            results = interleaved(runners, cases, args.warmup, args.runs)
    finally:
        for runner in runners.values():
            runner.close()
    if clocks := paths.read_gpu_clocks():
        setup.clocks.append(clocks)
    report = render(setup, results, setups, (read_s, read_bytes), args)
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write(report + "\n")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def render(
    setup: "paths.Setup",
    results: dict[str, dict[str, Result]],
    setups: dict[str, float],
    read: tuple[float, int],
    args: argparse.Namespace,
) -> str:
    device, dtype = device_and_dtype()
    machine = paths.machine()
    lines = [
        f"### {setup.family.upper()} {setup.size}x{setup.size}, {setup.steps} steps, batch 1 "
        f"({date.today().isoformat()})",
        "",
        f"Machine: {machine}; {device} {str(dtype).removeprefix('torch.')}; torch "
        f"{torch.__version__}, Python {platform.python_version()}. Weights: {args.weights}. "
        f"{args.warmup} warm-up + {args.runs} timed runs per cell; median (min-max)"
        f"{'; paths interleaved run by run' if args.interleave else ''}.",
        *(["", f"GPU clocks: {clocks}."] if (clocks := paths.gpu_clocks(setup.clocks)) else []),
        "",
        "| case | path | median s | min-max s | x diffusers | peak memory |",
        "|---|---|---|---|---|---|",
    ]
    raw = results.get("diffusers", {})
    cases = list(dict.fromkeys(case for by_case in results.values() for case in by_case))
    for case in cases:
        base = raw.get(case) or raw.get("txt2img")
        for name, by_case in results.items():
            if case not in by_case:
                continue
            r = by_case[case]
            ratio = f"{r.median / base.median:.3f}" if base else "-"
            spread = f"{min(r.seconds):.3f}-{max(r.seconds):.3f}"
            memory = _gb(r.peak_bytes) if r.peak_bytes else "-"
            lines.append(f"| {case} | {name} | {r.median:.3f} | {spread} | {ratio} | "
                         f"{memory} |")  # fmt: skip
    lines += ["", *stage_table(results), "", *findings(results, setups, read)]
    return "\n".join(lines)


def stage_table(results: dict[str, dict[str, Result]]) -> list[str]:
    """Median stage timings (ms) of our paths; transfer: the server's wall time beyond them."""
    rows = ["| case | path | " + " | ".join(STAGES) + " | transfer |",
            "|---|---|" + "---|" * (len(STAGES) + 1)]  # fmt: skip
    for name in [n for n in results if n != "diffusers"]:
        for case, r in results[name].items():
            stages = r.stage_medians()
            if not stages:
                continue
            transfer = r.median * 1000 - sum(stages.values()) if name == "server" else None
            cells = [f"{stages.get(s, 0):.0f}" for s in STAGES]
            cells.append(f"{transfer:.0f}" if transfer is not None else "-")
            rows.append(f"| {case} | {name} | " + " | ".join(cells) + " |")
    return rows


def findings(
    results: dict[str, dict[str, Result]], setups: dict[str, float], read: tuple[float, int]
) -> list[str]:
    read_s, read_bytes = read
    out = [f"- Plain read of the build's safetensors: {_gb(read_bytes)} in {read_s:.2f} s."]
    for name, seconds in setups.items():
        out.append(f"- Setup, {name}: {seconds:.2f} s ({seconds / read_s:.2f}x the plain read).")
    ours = results.get("generator", {})
    plain = ours.get("txt2img")
    raw = results.get("diffusers", {}).get("txt2img")
    if plain and raw and raw.last is not None:
        diff = np.abs(plain.last.image.astype(float) - raw.last.image.astype(float)).mean()
        out.append(f"- Generator vs diffusers, txt2img image: mean abs diff {diff:.2f}/255.")
    if plain and (lora := ours.get("lora")):
        out.append(f"- Warm LoRA: {lora.median / plain.median:.3f}x a plain request.")
    if plain and (previewed := ours.get("previews")):
        diff = np.abs(previewed.last.image.astype(float) - plain.last.image.astype(float)).max()
        out.append(f"- Previews every 10 steps: {previewed.median / plain.median:.3f}x a plain "
                   f"request; the image differs by at most {diff:.0f}/255.")  # fmt: skip
    served = results.get("server", {})
    if ratios := [f"{case} {served[case].median / r.median:.3f}x" for case, r in ours.items()
                  if case in served]:  # fmt: skip
        out.append(f"- Server / in-process (generator): {', '.join(ratios)}.")
    if plain and (cached := ours.get("deepcache")):
        diff = np.abs(cached.last.image.astype(float) - plain.last.image.astype(float)).mean()
        counts = cached.last.deepcache.get("base")
        reused = f"{counts[0]} of {counts[1]} UNet calls reused" if counts else ""
        out.append(f"- DeepCache (interval 3): {plain.median / cached.median:.2f}x faster than "
                   f"plain, {reused}; mean abs diff {diff:.2f}/255.")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
