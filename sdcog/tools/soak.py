"""script/soak: many mixed requests against one Cog server, checking that nothing piles up.

Good requests (text-to-image, image-to-image, inpainting, each with a fixed seed) must succeed
with the same bytes every time; bad images, bad masks, bad adapter files, hostile inputs (an image
bomb, a 36-megapixel photo with a mask of another size, a LoRA of the wrong shapes, a safetensors
header nested 200,000 deep, a prompt over 600 tokens, too many LoRAs, a URL that reads two ways)
and invalid values must fail naming their input; cancelled predictions (once started, and at
once) must end cancelled. Every 10 requests the server's memory (RSS of its processes) and its
temporary folder's size are sampled: from the second quarter of the run (after warm-up) to the
last they must stay flat.
"""

import argparse
import io
import os
import pickle
import statistics
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import torch
from PIL import Image
from safetensors.torch import save

from ..common.protocol import data_uri, error_message
from .cli import Webhook
from .cog_server import CogServer, interrupt_on_hangup

SMALL = {"width": 128, "height": 128, "num_inference_steps": 4, "seed": 7}
RSS_SLACK = 1.02  # +2 % from the second quarter's median to the last's (the first warms up)
# Cog 0.23.1: a cancel that lands while Cog submits the prediction (in its own code, before any of
# ours runs) ends it failed at once; sdcog/serving/cog_cancel.py honours the ones it loses later.
COG_CANCEL_RACE = "Prediction failed: Failed to submit coroutine: CancelationException"
TMP_SLACK = 1 << 20  # +1 MiB


def _uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return data_uri(buffer.getvalue())


def png_bomb(width: int, height: int) -> bytes:
    """A PNG that announces width x height pixels in a few hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    data = chunk(b"IDAT", zlib.compress(b"\0" * 999))
    return b"\x89PNG\r\n\x1a\n" + header + data + chunk(b"IEND", b"")


def _serve_files(folder: Path) -> str:
    """Bad adapter files over HTTP on 127.0.0.1."""
    (folder / "pickle.safetensors").write_bytes(pickle.dumps({"weight": list(range(100))}))
    (folder / "noise.safetensors").write_bytes(os.urandom(4096))
    (folder / "cut.safetensors").write_bytes(b'\x40\x00\x00\x00\x00\x00\x00\x00{"a": ')
    deep = b"[" * 200_000 + b"]" * 200_000
    (folder / "deep.safetensors").write_bytes(struct.pack("<Q", len(deep)) + deep)
    layer = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    shapes = {
        f"{layer}.lora_A.weight": torch.zeros(4, 7),
        f"{layer}.lora_B.weight": torch.zeros(9, 4),
    }
    (folder / "misshapen.safetensors").write_bytes(save(shapes))

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
    big = io.BytesIO()
    Image.new("RGB", (6000, 6000), (40, 90, 200)).save(big, format="JPEG", quality=50)
    big_photo = data_uri(big.getvalue(), "image/jpeg")
    bomb = data_uri(png_bomb(13_376, 13_376))
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
        "image bomb": ({"prompt": "x", "image": bomb, **SMALL}, "image"),
        "big photo": (
            {"prompt": "x", "image": big_photo, "mask": _uri(Image.new("L", (64, 64))), **SMALL},
            "mask",
        ),
        "misshapen LoRA": (
            {"prompt": "x", "lora_weights": [f"{files}/misshapen.safetensors"], **SMALL},
            "lora_weights",
        ),
        "deep header": (
            {"prompt": "x", "lora_weights": [f"{files}/deep.safetensors"], **SMALL},
            "lora_weights",
        ),
        "long prompt": ({"prompt": "a red cat, " * 400, **SMALL}, "prompt"),
        "too many LoRAs": (
            {"prompt": "x", "lora_weights": [f"{files}/noise.safetensors"] * 9, **SMALL},
            "lora_weights",
        ),
        "two-faced URL": (
            {"prompt": "x", "lora_weights": [f"{files}\\@1.1.1.1/x.safetensors"], **SMALL},
            "lora_weights",
        ),
    }


def _cancel(server: CogServer, webhook: Webhook, at_once: bool) -> str:
    """An async prediction cancelled once it has started, or as soon as it is accepted; its
    final status."""
    body = {"prompt": "to be cancelled", "width": 512, "height": 512, "num_inference_steps": 500}
    events = ["completed"] if at_once else ["start", "completed"]
    answer = server.post(body, headers={"Prefer": "respond-async"}, webhook=webhook.url,
                         webhook_events_filter=events)  # fmt: skip
    if not at_once:
        webhook.events.get(timeout=60)  # started
    server.http.post(f"{server.url}/predictions/{answer.json()['id']}/cancel", timeout=10)
    while (event := webhook.events.get(timeout=120))["status"] not in ("canceled", "failed"):
        pass
    return f"{event['status']} {event.get('error') or ''}".strip()


def _rss(pid: int) -> tuple[int, int]:
    """The RSS of the server process, and of its children (the worker)."""
    process = psutil.Process(pid)
    return process.memory_info().rss, sum(
        p.memory_info().rss for p in process.children(recursive=True)
    )


def _disk(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> None:
    interrupt_on_hangup()
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
    print(f"{'request':>8} {'RSS MiB':>9} {'server':>8} {'worker':>8} {'tmp KiB':>8}")
    for n, (server_rss, worker_rss), disk in samples:
        rss = server_rss + worker_rss
        print(f"{n:>8} {rss / 2**20:>9.1f} {server_rss / 2**20:>8.1f} {worker_rss / 2**20:>8.1f} "
              f"{disk / 2**10:>8.1f}")  # fmt: skip
    print(", ".join(f"{kind}: {n}" for kind, n in counts.items()))
    # RSS moves with whatever ran last: compare the medians of the second and last quarters.
    quarter = max(1, len(samples) // 4)
    second, last = samples[quarter : 2 * quarter], samples[-quarter:]
    rss_0, rss_n = (statistics.median(sum(rss) for _, rss, _ in part) for part in (second, last))
    (start, _, disk_0), (_, _, disk_n) = second[0], samples[-1]
    if rss_n > rss_0 * RSS_SLACK:
        problems.append(f"RSS grew from {rss_0 / 2**20:.0f} to {rss_n / 2**20:.0f} MiB")
    if disk_n > disk_0 + TMP_SLACK:
        problems.append(f"temporary files grew from {disk_0} to {disk_n} bytes")
    if problems:
        raise SystemExit("FAILED:\n" + "\n".join(problems))
    print(f"OK: {args.requests} requests; RSS {rss_n / rss_0:.3f}x (medians of the second and "
          f"last quarters) and temporary files {disk_n - disk_0:+d} bytes from request {start} "
          "to the end")  # fmt: skip


def _soak(server: CogServer, files: str, total: int, tmp: Path) -> tuple[list, list, Counter]:
    kinds = _requests(files)
    order = [*kinds, "cancel", "cancel at once", "invalid"]
    baselines: dict[str, list[str]] = {}
    problems: list[str] = []
    samples: list[tuple[int, tuple[int, int], int]] = []
    counts: Counter = Counter()
    webhook = Webhook()
    for n in range(total):
        kind = order[n % len(order)]
        counts[kind] += 1
        if kind.startswith("cancel"):
            status = _cancel(server, webhook, at_once=kind == "cancel at once")
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
            elif names and (
                not (error := error_message(result.get("error") or "")).startswith(f"{names}: ")
                or str(tmp) in error
            ):
                problems.append(f"request {n} ({kind}): {result['status']}: {result.get('error')}")
        if n % 10 == 9 or n == total - 1:
            samples.append((n + 1, _rss(server.process.pid), _disk(tmp)))
            print(f"{n + 1} requests, {len(problems)} problems", file=sys.stderr)
            time.sleep(0.2)
    webhook.httpd.shutdown()
    return problems, samples, counts
