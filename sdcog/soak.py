"""script/soak: many mixed requests against one Cog server, checking that nothing piles up.

Good requests (text-to-image, image-to-image, inpainting, each with a fixed seed) must succeed
with the same bytes every time; bad images, bad masks, bad adapter files and invalid values must
fail naming their input; cancelled predictions must end cancelled. Every 20 requests the
server's memory (RSS of its processes) and its temporary folder's size are sampled: from the
first sample after warm-up to the end they must stay flat.
"""

import argparse
import base64
import io
import os
import pickle
import sys
import tempfile
import threading
import time
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import requests
from PIL import Image

from .cli import Webhook
from .local import CogServer, error_message

SMALL = {"width": 128, "height": 128, "num_inference_steps": 4, "seed": 7}
RSS_SLACK = 1.05  # +5 % from the sample half way through (the first half warms up)
# Cog 0.23.1: a cancel that lands while it starts the prediction ends it failed, before predict().
COG_CANCEL_RACE = "Prediction failed: Failed to submit coroutine: CancelationException"
TMP_SLACK = 1 << 20  # +1 MiB


def _uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"


def _serve_files(folder: Path) -> str:
    """Bad adapter files over HTTP on 127.0.0.1."""
    (folder / "pickle.safetensors").write_bytes(pickle.dumps({"weight": list(range(100))}))
    (folder / "noise.safetensors").write_bytes(os.urandom(4096))
    (folder / "cut.safetensors").write_bytes(b'\x40\x00\x00\x00\x00\x00\x00\x00{"a": ')

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_port}"


def _requests(files: str) -> dict[str, tuple[dict, str | None]]:
    """kind -> (input, the input its error must name, or None: it must succeed)."""
    photo = _uri(Image.new("RGB", (128, 128), (200, 120, 40)))
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (32, 32, 96, 96))
    return {
        "txt2img": ({"prompt": "a lighthouse", **SMALL}, None),
        "img2img": ({"prompt": "a lighthouse", "image": photo, **SMALL}, None),
        "inpaint": ({"prompt": "a door", "image": photo, "mask": _uri(mask), **SMALL}, None),
        "bad image": (
            {"prompt": "x", "image": "data:image/png;base64,bm90IGFuIGltYWdl", **SMALL},
            "image",
        ),
        "bad mask": (
            {"prompt": "x", "image": photo, "mask": _uri(Image.new("L", (64, 64))), **SMALL},
            "mask",
        ),
        "pickle LoRA": (
            {"prompt": "x", "lora_weights": [f"{files}/pickle.safetensors"], **SMALL},
            "lora_weights",
        ),
        "noise LoRA": (
            {"prompt": "x", "lora_weights": [f"{files}/noise.safetensors"], **SMALL},
            "lora_weights",
        ),
        "cut embedding": (
            {"prompt": "x", "textual_inversions": [f"<t>={files}/cut.safetensors"], **SMALL},
            "textual_inversions",
        ),
        "missing LoRA": (
            {"prompt": "x", "lora_weights": [f"{files}/none.safetensors"], **SMALL},
            "lora_weights",
        ),
        "server path": ({"prompt": "x", "image": "/etc/hostname", **SMALL}, "image"),
    }


def _cancel(server: CogServer, webhook: Webhook) -> str:
    """An async prediction cancelled once it has started; its final status."""
    body = {"prompt": "to be cancelled", "width": 512, "height": 512, "num_inference_steps": 500}
    answer = server.post(body, headers={"Prefer": "respond-async"}, webhook=webhook.url,
                         webhook_events_filter=["start", "completed"])  # fmt: skip
    webhook.events.get(timeout=60)  # started
    requests.post(f"{server.url}/predictions/{answer.json()['id']}/cancel", timeout=10)
    while (event := webhook.events.get(timeout=120))["status"] not in ("canceled", "failed"):
        pass
    return f"{event['status']} {event.get('error') or ''}".strip()


def _rss(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def _disk(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="script/soak", description=__doc__)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("-n", "--requests", type=int, default=200)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="sdcog-soak-") as root:
        tmp, served = Path(root, "tmp"), Path(root, "served")
        tmp.mkdir(), served.mkdir()
        files = _serve_files(served)
        env = {"TMPDIR": str(tmp), "ALLOW_PRIVATE_URLS": "127.0.0.1",
               "ADAPTER_CACHE_DIR": str(tmp / "adapters")}  # fmt: skip
        with open(Path(root, "server.log"), "w") as log:
            server = CogServer(args.weights, log, env=env)
            try:
                problems, samples, counts = _soak(server, files, args.requests, tmp)
            finally:
                server.stop()
    print(f"{'request':>8} {'RSS MiB':>9} {'tmp KiB':>8}")
    for n, rss, disk in samples:
        print(f"{n:>8} {rss / 2**20:>9.1f} {disk / 2**10:>8.1f}")
    print(", ".join(f"{kind}: {n}" for kind, n in counts.items()))
    (start, rss_0, disk_0), (_, rss_n, disk_n) = samples[len(samples) // 2], samples[-1]
    if rss_n > rss_0 * RSS_SLACK:
        problems.append(f"RSS grew from {rss_0 / 2**20:.0f} to {rss_n / 2**20:.0f} MiB")
    if disk_n > disk_0 + TMP_SLACK:
        problems.append(f"temporary files grew from {disk_0} to {disk_n} bytes")
    if problems:
        raise SystemExit("FAILED:\n" + "\n".join(problems))
    print(f"OK: {args.requests} requests; RSS {rss_n / rss_0:.3f}x and temporary files "
          f"{disk_n - disk_0:+d} bytes from request {start} to the end")  # fmt: skip


def _soak(server: CogServer, files: str, total: int, tmp: Path) -> tuple[list, list, Counter]:
    kinds = _requests(files)
    order = [*kinds, "cancel", "invalid"]
    baselines: dict[str, list[str]] = {}
    problems: list[str] = []
    samples: list[tuple[int, int, int]] = []
    counts: Counter = Counter()
    webhook = Webhook()
    for n in range(total):
        kind = order[n % len(order)]
        counts[kind] += 1
        if kind == "cancel":
            status = _cancel(server, webhook)
            if status.startswith(f"failed {COG_CANCEL_RACE}"):
                counts["cancel lost to Cog's race"] += 1
            elif status != "canceled":
                problems.append(f"request {n}: a cancelled prediction ended {status}")
        elif kind == "invalid":
            if (code := server.post({"prompt": "x", "num_outputs": 99}).status_code) != 422:
                problems.append(f"request {n}: num_outputs=99 got {code}, not 422")
        else:
            body, names = kinds[kind]
            result = server.post(body).json()
            if names is None and result["status"] != "succeeded":
                problems.append(f"request {n} ({kind}): {result['status']}: {result.get('error')}")
            elif names is None and baselines.setdefault(kind, result["output"]) != result["output"]:
                problems.append(f"request {n} ({kind}): not byte-identical to the first")
            elif names and not error_message(result.get("error") or "").startswith(f"{names}: "):
                problems.append(f"request {n} ({kind}): {result['status']}: {result.get('error')}")
        if n % 20 == 19 or n == total - 1:
            samples.append((n + 1, _rss(server.process.pid), _disk(tmp)))
            print(f"{n + 1} requests, {len(problems)} problems", file=sys.stderr)
            time.sleep(0.2)
    webhook.httpd.shutdown()
    return problems, samples, counts
