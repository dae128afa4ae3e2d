"""script/try-it-times: how long the README's Try it takes here, measured as a user runs it.

Each command runs RUNS times (min, median, max), on the tiny weights when no real ones are
downloaded, and the machine and its load are said with the figures, as the README's table
shows them:

- Cog's server start on the weights, to READY;
- `script/predict -i prompt=... -i seed=1` as Try it writes it (defaults: the model's native
  size, 50 steps), start to files;
- `script/test` (the fast tier).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .cog_server import ROOT, CogServer


def timed(command: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)  # fmt: skip
    return time.monotonic() - start


def server_start(weights: Path) -> float:
    with tempfile.TemporaryFile("w") as log:
        start = time.monotonic()
        server = CogServer(weights, log)
        took = time.monotonic() - start
        server.stop()
    return took


def spread(seconds: list[float]) -> str:
    return (f"{min(seconds):.1f} / {statistics.median(seconds):.1f} / {max(seconds):.1f} s "
            f"({len(seconds)} runs)")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="script/try-it-times", description=__doc__)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--test-runs", type=int, default=2)
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.2f} before; weights "
          f"{args.weights}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        predict = ["script/predict", "-o", out, "-i", "prompt=an astronaut riding a horse",
                   "-i", "seed=1"]  # fmt: skip
        rows = {
            "Cog's server start (to READY)": [server_start(args.weights) for _ in range(args.runs)],
            "script/predict as in Try it (start to files)": [
                timed(predict) for _ in range(args.runs)
            ],
            "script/test (fast tier)": [timed(["script/test"]) for _ in range(args.test_runs)],
        }
    for what, seconds in rows.items():
        print(f"{what}: {spread(seconds)}")
    print(f"load average after: {os.getloadavg()[0]:.2f}", file=sys.stderr)
