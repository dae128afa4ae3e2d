"""script/task: another system's task payload, run through Cog's server.

    script/task --dialect hydrogen TASK.json [-o outputs/] [--pins weights/pins.toml] [--url URL]

The payload is checked against the dialect's JSON Schema and translated to predict()'s inputs
(sdcog/dialects); the prediction runs on Cog's real server (started over the build's weights, or
the one at --url), and the images are written to the output folder.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from . import cli
from .dialects import Build, hydrogen
from .local import ROOT, CogServer, RunningServer, error_message
from .weights import PIN_FILE

DIALECTS = {"hydrogen": hydrogen}


def run(server: RunningServer, dialect: str, task: object, build: Build,
        out: Path) -> list[Path]:  # fmt: skip
    """The task's images, written to `out`; a ValueError names what the task got wrong."""
    inputs = DIALECTS[dialect].inputs(task, build)
    result = cli.run(server, inputs)
    if result["status"] != "succeeded":
        raise ValueError(f"{dialect}: the prediction {result['status']}: "
                         f"{error_message(result.get('error') or '')}")  # fmt: skip
    return cli.save(result, out)


def main(argv: list[str] | None = None) -> None:
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
    build = Build.from_pins(args.pins)
    try:
        DIALECTS[args.dialect].inputs(task, build)  # fail before a server starts
        if args.url:
            paths = run(RunningServer(args.url), args.dialect, task, build, args.output)
        else:
            with (
                tempfile.TemporaryDirectory(prefix="sdcog-task-") as tmp,
                open(cli.CACHE / "cog-server.log", "w") as log,
            ):
                print("starting Cog's server ...", file=sys.stderr)
                server = CogServer(args.weights, log, env={"TMPDIR": tmp})
                try:
                    paths = run(server, args.dialect, task, build, args.output)
                finally:
                    server.stop()
    except ValueError as e:
        raise SystemExit(str(e)) from None
    for path in paths:
        print(path)
