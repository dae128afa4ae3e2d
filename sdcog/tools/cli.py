"""script/predict: `cog predict` without Docker, through Cog's real server.

The inputs are checked first, by the schema and by the same rules predict() applies to the
request itself, so a mistake is said before a server starts (and before tiny weights are
written). The prediction runs asynchronously with its events sent to a webhook on 127.0.0.1, so
its logs and progress bars show while it runs; Ctrl-C (or a closed terminal) cancels it and stops
the server. The server gets a temporary folder of its own (TMPDIR), removed afterwards, and Cog's
own folder for the prediction is removed too, so a run leaves nothing in /tmp; its log is kept
in .cache/logs/ (one file per run), and adapters are cached in .cache/adapters across runs.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import jsonschema
import requests

from ..common.protocol import data_uri, error_message, save, save_control_maps, save_previews
from ..dialects import ModelNames, infotext
from ..request import request_checks
from ..request.request import FILE_INPUTS, Request, name_hint
from .cog_server import ROOT, CogServer, RunningServer, interrupt_on_hangup, run_log

CACHE = ROOT / ".cache"
LIVENESS_S = 2  # how often a prediction with no news checks that its server still lives
TYPES = {"integer": int, "number": float}
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def check(inputs: dict[str, Any], document: dict) -> None:
    """The inputs against the schema's choices and ranges, before a server starts (Cog's
    server would refuse them with a 422, after its start)."""
    schema = {**document, "$ref": "#/components/schemas/Input"}
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(inputs)
    )
    if error is not None:
        name = next((str(part) for part in error.absolute_path), "input")
        raise SystemExit(f"-i {name}: {error.message[:300]}")


def check_request(inputs: dict[str, Any]) -> None:
    """The rules predict() checks on the request itself and on this machine (a width off the
    multiples of 8, CUDA noise without CUDA, a malformed base_model, inputs that need each
    other), by the same code, before a server starts. A file input stands in as Cog hands it
    over; its content is checked by the server."""
    placeholder = Path(tempfile.gettempdir()) / "input"
    given = {name: placeholder if name in FILE_INPUTS else value for name, value in inputs.items()}
    try:
        request_checks.check_here(Request.from_inputs(given))
    except ValueError as e:
        raise SystemExit(f"-i {e}") from None


def typed(name: str, value: str, schemas: dict) -> object:
    """A `-i name=value` string as the JSON type the schema gives the input (as `cog predict`)."""
    properties = schemas["Input"]["properties"]
    if name not in properties:
        hint = name_hint(name, properties) or f"; inputs: {', '.join(properties)}"
        raise SystemExit(f"-i {name}: no such input{hint}")
    if value.startswith("@"):  # a local file, sent inline as cog predict does
        path = Path(value[1:]).expanduser()
        if not path.is_file():
            raise SystemExit(f"-i {name}={value}: no file {path}")
        return data_uri(path.read_bytes(), "application/octet-stream")
    prop = properties[name]
    if "allOf" in prop:
        prop = schemas[prop["allOf"][0]["$ref"].rsplit("/", 1)[1]]
    if prop.get("type") == "array":
        prop = prop["items"]
    kind = prop.get("type")
    if kind == "boolean":
        if value.lower() not in BOOLEANS:
            raise SystemExit(f"-i {name}={value}: {name} takes true or false")
        return BOOLEANS[value.lower()]
    if kind in TYPES:
        try:
            return TYPES[kind](value)
        except ValueError:
            raise SystemExit(f"-i {name}={value}: {name} takes a number ({kind})") from None
    return value


class Webhook:
    """An HTTP server on 127.0.0.1 queueing the prediction events Cog's server posts."""

    def __init__(self) -> None:
        self.events: Queue = Queue()
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                events.put(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def run(server: RunningServer, inputs: dict) -> dict:
    """The finished prediction, its logs written to stderr as they arrive. A server that dies
    or stops answering on the way ends the wait, within about LIVENESS_S seconds."""
    webhook = Webhook()
    try:
        try:
            response = server.post(
                inputs,
                headers={"Prefer": "respond-async"},
                webhook=webhook.url,
                webhook_events_filter=["logs", "completed"],
            )
        except requests.ConnectionError:
            raise SystemExit(f"no Cog server answers at {server.url}") from None
        if response.status_code != 202:
            detail = response.json().get("detail", response.text)
            problems = [f"{'.'.join(map(str, d['loc'][2:]))}: {d['msg']}" for d in detail]
            raise SystemExit("invalid input: " + "; ".join(problems))
        shown = 0
        try:
            while True:
                try:
                    event = webhook.events.get(timeout=LIVENESS_S)
                except Empty:
                    if trouble := server.trouble():
                        raise SystemExit(f"the prediction was lost: {trouble}") from None
                    continue
                sys.stderr.write(event.get("logs", "")[shown:])
                shown = len(event.get("logs", ""))
                if event["status"] in ("succeeded", "failed", "canceled"):
                    return event
        except KeyboardInterrupt:
            prediction = response.json()["id"]
            server.http.post(f"{server.url}/predictions/{prediction}/cancel", timeout=10)
            raise SystemExit("\ncancelled") from None
    finally:
        webhook.httpd.shutdown()


def chosen_weights() -> Path:
    """WEIGHTS_DIR, or tiny random weights (written now if need be), as script/choose-weights
    chooses them for every script: after the inputs are checked, so a typo costs no wait."""
    chosen = subprocess.run(
        ["bash", "-c", '. script/choose-weights && printf %s "$WEIGHTS_DIR"'],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True,
    )  # fmt: skip
    return ROOT / chosen.stdout


def from_infotext(source: str) -> dict[str, Any]:
    """The inputs of an infotext (sdcog/dialects/infotext.py); what is not honoured is said in
    one line. The model, LoRAs and embeddings are looked up by hash on civitai (CIVITAI_ENDPOINT,
    CIVITAI_TOKEN), through the environment's proxy if one is set."""
    endpoint = os.environ.get("CIVITAI_ENDPOINT", "https://civitai.com")
    token = os.environ.get("CIVITAI_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(url: str) -> Any:
        try:
            response = requests.get(url, headers=headers, timeout=20)
        except requests.RequestException:
            return None
        return response.json() if response.status_code == 200 else None

    try:
        text = infotext.read(source)
        inputs, unused = infotext.to_inputs(
            text, ModelNames.from_pins(), infotext.civitai_lookup(endpoint, get)
        )
    except (OSError, ValueError) as e:
        raise SystemExit(f"--from: {e}") from None
    if unused:
        print(f"--from: not honoured: {'; '.join(unused)}", file=sys.stderr)
    return inputs


def main(argv: list[str] | None = None) -> None:
    """script/predict: `cog predict` without Docker. Starts the real server, runs one
    prediction, saves its images."""
    interrupt_on_hangup()
    parser = argparse.ArgumentParser(prog="script/predict", description=main.__doc__)
    parser.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an input; VALUE @path sends a local file; repeat for list inputs",
    )
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "outputs",
                        help="folder for the images (default: outputs/)")  # fmt: skip
    parser.add_argument("--weights", type=Path, help="default: script/choose-weights' choice")
    parser.add_argument("--from", dest="source", metavar="IMAGE_OR_TEXT",
                        help="start from AUTOMATIC1111's generation data: an image that carries "
                        "it, a text file, or the text; -i inputs override it")  # fmt: skip
    args = parser.parse_args(argv)

    document = json.loads((ROOT / ".cog/openapi_schema.json").read_text())
    schemas = document["components"]["schemas"]
    inputs: dict[str, Any] = from_infotext(args.source) if args.source else {}
    for item in args.input:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"-i {item!r}: expected NAME=VALUE")
        value = typed(name, value, schemas)
        if schemas["Input"]["properties"][name].get("type") == "array":
            inputs.setdefault(name, []).append(value)
        else:
            inputs[name] = value
    check(inputs, document)
    check_request(inputs)
    weights = args.weights or chosen_weights()

    log_path = run_log("predict")
    with tempfile.TemporaryDirectory(prefix="sdcog-run-") as tmp, open(log_path, "w") as log:
        print(f"starting Cog's server (log: {log_path}) ...", file=sys.stderr)
        env = {
            "TMPDIR": tmp,
            "ADAPTER_CACHE_DIR": os.environ.get("ADAPTER_CACHE_DIR", str(CACHE / "adapters")),
            "MODEL_CACHE_DIR": os.environ.get("MODEL_CACHE_DIR", str(CACHE / "models")),
        }
        try:
            server = CogServer(weights, log, env=env)
        except (RuntimeError, TimeoutError) as e:
            raise SystemExit(f"Cog's server did not start: {e}") from None
        try:
            result = run(server, inputs)
        finally:
            server.stop()
    if result["status"] != "succeeded":
        error = error_message(result.get("error") or "")
        raise SystemExit(f"prediction {result['status']}: {error}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    saved = save_previews(result, args.output, stamp) + save(result, args.output, stamp)
    for path in saved + save_control_maps(result, args.output, stamp):
        print(path)
