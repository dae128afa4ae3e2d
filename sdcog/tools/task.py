"""script/task: another system's task payload, run through Cog's server.

    script/task --dialect a1111|hydrogen|opensourceais|real-esrgan|runware TASK.json [-o outputs/]
                [--pins weights/pins.toml] [--url URL]

The payload is checked against the dialect's JSON Schema and translated to predict()'s inputs
(sdcog/dialects/tasks.py); the predictions run on Cog's real server (started over the build's
weights, or the one at --url), the images are written to the output folder, and what the system
would answer is printed (a1111: A1111's JSON answer; hydrogen: the images' paths; runware: its
JSON response; opensourceais: its 201 body, with the request's record written beside the images;
real-esrgan: Replicate's finished prediction).
"""

import argparse
import functools
import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..common.pins import PIN_FILE
from ..dialects import ModelNames
from ..dialects.tasks import DIALECTS, run
from . import cli
from .cog_server import ROOT, CogServer, RunningServer, interrupt_on_hangup, run_log


def main(argv: list[str] | None = None) -> None:
    interrupt_on_hangup()
    parser = argparse.ArgumentParser(prog="script/task", description=__doc__.split("\n")[0])
    parser.add_argument("--dialect", choices=sorted(DIALECTS), required=True)
    parser.add_argument("task", type=Path, help="the task's JSON file")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "outputs")
    parser.add_argument("--pins", type=Path, default=PIN_FILE, help="the build's pin file")
    parser.add_argument("--weights", type=Path, help="weights for a server started here")
    parser.add_argument("--url", help="a Cog server already running")
    args = parser.parse_args(argv)
    try:
        task = json.loads(args.task.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{args.task}: not a JSON task: {e}") from None
    build = ModelNames.from_pins(args.pins)
    try:
        DIALECTS[args.dialect].translate(task, build)  # fail before a server starts
        with _server(args.url, args.weights) as server:
            predict = functools.partial(cli.run, server)
            answer = run(predict, args.dialect, task, build, args.output)
    except (ValueError, SystemExit) as e:  # SystemExit: cli.run's one line (a lost server)
        if isinstance(e, SystemExit) and not isinstance(e.code, str):
            raise
        # The system's answer, its errors included, goes to stdout; the status says it failed.
        print(
            DIALECTS[args.dialect].failure(e if isinstance(e, ValueError) else ValueError(e.code))
        )
        raise SystemExit(1) from None
    print(answer)


@contextmanager
def _server(url: str | None, weights: Path) -> Iterator[RunningServer]:
    """The Cog server at `url`, or one started here over `weights` and stopped afterwards."""
    if url:
        yield RunningServer(url)
        return
    with (
        tempfile.TemporaryDirectory(prefix="sdcog-task-") as tmp,
        open(run_log("task"), "w") as log,
    ):
        print("starting Cog's server ...", file=sys.stderr)
        env = {"TMPDIR": tmp, "MODEL_CACHE_DIR": str(cli.CACHE / "models")}  # kept across tasks
        server = CogServer(weights, log, env=env)
        try:
            yield server
        finally:
            server.stop()
