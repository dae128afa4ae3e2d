"""script/task: another system's task payload, run through Cog's server.

    script/task --dialect hydrogen|runware TASK.json [-o outputs/] [--pins weights/pins.toml]
                [--url URL]

The payload is checked against the dialect's JSON Schema and translated to predict()'s inputs
(sdcog/dialects); the predictions run on Cog's real server (started over the build's weights, or
the one at --url), the images are written to the output folder, and what the system would answer
is printed (hydrogen: the images' paths; runware: its JSON response).
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from . import cli
from .dialects import Build, hydrogen, runware
from .local import ROOT, CogServer, RunningServer, error_message
from .weights import PIN_FILE

DIALECTS = {"hydrogen": hydrogen, "runware": runware}


def run(server: RunningServer, dialect: str, payload: object, build: Build, out: Path) -> str:
    """What the system answers, its images written to `out`; a ValueError names what the payload
    got wrong."""
    module = DIALECTS[dialect]
    results = []
    for index, inputs in enumerate(module.translate(payload, build)):
        result = cli.run(server, inputs)
        if result["status"] != "succeeded":
            message = error_message(result.get("error") or "") or result["status"]
            raise module.failed(payload, index, message)
        results.append(result)
    return module.answer(payload, results, out)


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
        DIALECTS[args.dialect].translate(task, build)  # fail before a server starts
        if args.url:
            answer = run(RunningServer(args.url), args.dialect, task, build, args.output)
        else:
            with (
                tempfile.TemporaryDirectory(prefix="sdcog-task-") as tmp,
                open(cli.CACHE / "cog-server.log", "w") as log,
            ):
                print("starting Cog's server ...", file=sys.stderr)
                server = CogServer(args.weights, log, env={"TMPDIR": tmp})
                try:
                    answer = run(server, args.dialect, task, build, args.output)
                finally:
                    server.stop()
    except ValueError as e:
        raise SystemExit(DIALECTS[args.dialect].failure(e)) from None
    print(answer)
