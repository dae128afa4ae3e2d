"""What code outside a prediction reads from it: the lines of its logs and the names of its files.

Cog's HTTP API returns a prediction's files (data URIs or uploads), its logs and its error, and
nothing else: which seed made which output, which outputs the safety checker left out, where the
time went and how much DeepCache reused are told in log lines, and the seed in each file's name.
Those lines and names are written and read here only, so the two sides cannot drift apart.
In-process callers get the same facts as data (sdcog.outputs.outputs.Generation).
"""

import base64
import re
from collections.abc import Iterable
from pathlib import Path

TIMINGS, SETUP_TIMINGS = "timings", "setup"
_SEED = re.compile(r"^output (\d+): seed (\d+)$", re.M)
_FLAGGED = re.compile(r"^output (\d+) \(seed (\d+)\) was flagged", re.M)
# Not anchored at the line's start: it is written while diffusers' progress bar, which ends its
# line only when it finishes, is on that line.
_PREVIEW = re.compile(r"preview: output (\d+) step (\d+)$", re.M)
_CONTROL_MAP = re.compile(r"^control map: (controlnet_\d+) (\w+)$", re.M)
_DEEPCACHE = re.compile(r"^deepcache: (\d+) of (\d+) (\w+) UNet calls reused$", re.M)
# Cog 0.23.1 reports an exception from the async predict() as "Prediction failed: Async
# prediction failed: ValueError: <message>" (coglet wraps it twice); ours name the input first.
_COG_ERROR_PREFIX = re.compile(r"(?:(?:Async p|P)rediction failed: )+(?:\w+(?:Error|Exception): )?")


# Written by the prediction


def seed_line(index: int, seed: int) -> str:
    return f"output {index}: seed {seed}"


def flagged_line(index: int, seed: int) -> str:
    return f"output {index} (seed {seed}) was flagged as NSFW and left out"


def timings_line(milliseconds: dict[str, float], label: str = TIMINGS) -> str:
    stages = ", ".join(f"{name} {ms:.0f}" for name, ms in milliseconds.items())
    return f"{label} (ms): {stages}"


def deepcache_line(unet: str, reused: int, total: int) -> str:
    return f"deepcache: {reused} of {total} {unet} UNet calls reused"


def preview_line(index: int, step: int) -> str:
    return f"preview: output {index} step {step}"


def preview_name(index: int, step: int, token: str) -> str:
    """A preview file's name without its extension (a JPEG)."""
    return f"preview-{index}-step{step}-{token}"


def output_name(index: int, seed: int, token: str) -> str:
    """An output file's name without its extension; `token` keeps it unique."""
    return f"out-{index}-seed{seed}-{token}"


def control_map_line(slot: str, kind: str) -> str:
    return f"control map: {slot} {kind}"


def control_map_name(slot: str, kind: str, token: str) -> str:
    """A control map's file name without its extension (a PNG): control-<slot number>-<kind>."""
    return f"control-{slot.removeprefix('controlnet_')}-{kind}-{token}"


# Read by its callers


def output_seeds(logs: str) -> list[tuple[int, bool]]:
    """Every output's seed, and whether the safety checker left it out, from the logs."""
    flagged = {int(seed) for _, seed in _FLAGGED.findall(logs)}
    return [(int(seed), int(seed) in flagged) for _, seed in _SEED.findall(logs)]


def previews(logs: str) -> list[tuple[int, int]]:
    """(output, step) of each preview, in the order they were sent: a prediction's output list
    is its previews, then its images (data URIs carry no file names; these lines do)."""
    return [(int(index), int(step)) for index, step in _PREVIEW.findall(logs)]


def control_maps(logs: str) -> list[tuple[str, str]]:
    """(slot, kind) of each control map returned (return_control_maps), in output order: they
    come after the images."""
    return _CONTROL_MAP.findall(logs)


def kept_seeds(logs: str) -> list[int]:
    """The seeds of the returned images, in order, from the prediction's logs."""
    return [seed for seed, flagged in output_seeds(logs) if not flagged]


def timings(logs: str, label: str = TIMINGS) -> dict[str, float]:
    """The stage timings (ms) of a timings line, or {} without one."""
    match = re.search(rf"^{label} \(ms\): (.*)$", logs, re.M)
    return {name: float(ms) for name, ms in re.findall(r"(\w+) (\d+)", match[1])} if match else {}


def deepcache_counts(logs: str) -> dict[str, tuple[int, int]]:
    """UNet name -> (calls that reused features, calls), from the logs."""
    return {unet: (int(reused), int(total)) for reused, total, unet in _DEEPCACHE.findall(logs)}


def error_message(error: str) -> str:
    """A failed prediction's error as predict() raised it, without Cog's prefixes."""
    return _COG_ERROR_PREFIX.sub("", error, count=1)


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    """Bytes as a data: URI, as Cog's server takes and answers files."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def read_data_uri(uri: str) -> tuple[str, bytes]:
    """A data: URI (as Cog's server answers files) as its file extension and its bytes."""
    header, data = uri.split(",", 1)
    extension = header.split("/")[-1].split(";")[0].replace("jpeg", "jpg")
    return extension, base64.b64decode(data)


def final_outputs(result: dict) -> list[str]:
    """A finished prediction's images, without its previews and control maps."""
    logs = result.get("logs", "")
    outputs = result["output"][len(previews(logs)) :]
    return outputs[: len(outputs) - len(control_maps(logs))]


def save_control_maps(result: dict, folder: Path, stamp: str) -> list[Path]:
    """A finished prediction's control maps as control-<slot>-<kind>-<stamp>.png in `folder`."""
    maps = control_maps(result.get("logs", ""))
    uris = result["output"][len(result["output"]) - len(maps) :]
    names = [control_map_name(slot, kind, stamp) for slot, kind in maps]
    return _write(folder, zip(names, uris, strict=True))


def save_previews(result: dict, folder: Path, stamp: str) -> list[Path]:
    """A finished prediction's previews as preview-<output>-step<k>-<stamp>.jpg in `folder`."""
    names = [preview_name(index, step, stamp) for index, step in previews(result.get("logs", ""))]
    return _write(folder, zip(names, result["output"], strict=False))


def _write(folder: Path, named: Iterable[tuple[str, str]]) -> list[Path]:
    """Each (name without extension, data URI) as a file in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, uri in named:
        extension, data = read_data_uri(uri)
        path = folder / f"{name}.{extension}"
        path.write_bytes(data)
        paths.append(path)
    return paths


def save(result: dict, folder: Path, stamp: str) -> list[Path]:
    """A finished prediction's images as out-<index>-seed<seed>-<stamp>.<ext> in `folder`;
    where a name is taken (another run in the same second), the whole run gets -2, -3, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = kept_seeds(result.get("logs", ""))
    files = [read_data_uri(uri) for uri in final_outputs(result)]
    for run in range(1, 1000):
        suffix = f"-{run}" if run > 1 else ""
        paths = [
            folder / f"{output_name(index, seed, stamp + suffix)}.{extension}"
            for index, ((extension, _), seed) in enumerate(zip(files, seeds, strict=True))
        ]
        if not any(path.exists() for path in paths):
            break
    for path, (_, data) in zip(paths, files, strict=True):
        path.write_bytes(data)
    return paths
