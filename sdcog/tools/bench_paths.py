"""The paths script/bench compares, each on the same weights, seed and inputs: our Generator
in-process and a prediction through Cog's HTTP server here; a plain diffusers pipeline as its
documentation loads it in bench_diffusers.py. Each path answers `call(case)` with a function that
makes one image and returns it as an Outcome, or None where the case is not the path's (DeepCache
in diffusers)."""

import functools
import http.server
import io
import os
import platform
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from ..adapters.controlnets import KIND_ENTRIES, UNION_ENTRY
from ..common import protocol
from ..generate import Generator
from ..request.request import Request
from ..security.netguard import networks
from ..serving.settings import Settings
from ..speed.fast_path import choose
from .cog_server import CogServer

CASES = ("txt2img", "refiner", "lora", "controlnet", "deepcache", "previews", "upscale",
         "face_fix")  # fmt: skip
# The face fix's case: a real portrait (NASA's, public domain), finished only at the bench's size.
PORTRAIT = Path(__file__).resolve().parents[2] / "tests/data/photos/astronaut.jpg"
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
NEGATIVE = "blurry, low quality"


@dataclass
class Outcome:
    """One image a path made, with what our paths report about it."""

    image: np.ndarray
    stages: dict[str, float] = field(default_factory=dict)  # milliseconds per timings stage
    deepcache: dict[str, tuple[int, int]] = field(default_factory=dict)


Call = Callable[[], Outcome]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _rss_peak(pids: list[int]) -> int:
    """The processes' peak resident memory (VmHWM), summed."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return total


def _reset_rss_peak(pids: list[int]) -> None:
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM


def reset_peak(pids: list[int] | None = None) -> None:
    if torch.cuda.is_available() and pids is None:
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_rss_peak(pids or [os.getpid()])


def peak(pids: list[int] | None = None) -> int:
    """CUDA's max allocated bytes in this process, or the peak RSS of the processes."""
    if torch.cuda.is_available() and pids is None:
        return torch.cuda.max_memory_allocated()
    if torch.cuda.is_available():
        return 0  # another process's CUDA peak is not visible from here
    return _rss_peak(pids or [os.getpid()])


def machine() -> str:
    if torch.cuda.is_available():
        capability = ".".join(map(str, torch.cuda.get_device_capability()))
        return f"{torch.cuda.get_device_name()} (compute {capability}, CUDA {torch.version.cuda})"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores CPU"


NVIDIA_SMI_QUERY = "clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu"


def read_gpu_clocks() -> str | None:
    """The GPU's SM clock (and its maximum), memory clock, power and temperature now, from
    nvidia-smi; None without one."""
    try:
        answer = subprocess.run(
            ["nvidia-smi", f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return answer.stdout.strip().splitlines()[0] if answer.stdout.strip() else None


def gpu_clocks(readings: list[str]) -> str:
    """The readings taken before and after the runs, for the report."""
    return "; ".join(
        f"{when}: {reading} ({NVIDIA_SMI_QUERY})"
        for when, reading in zip(("before", "after"), readings, strict=False)
    )


def write_lora(unet_file: Path, path: Path, rank: int = 16) -> Path:
    """A random LoRA (diffusers' peft key format) on every attention projection of the UNet,
    shaped from its weights file without loading it."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    with safe_open(unet_file, "pt") as f:
        for key in f.keys():
            if key.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")):
                out_features, in_features = f.get_slice(key).get_shape()
                module = key.removesuffix(".weight")
                state[f"unet.{module}.lora_A.weight"] = (
                    torch.randn(rank, in_features, generator=generator) * 0.01
                )
                state[f"unet.{module}.lora_B.weight"] = (
                    torch.randn(out_features, rank, generator=generator) * 0.01
                )
    save_file(state, path)
    return path


class Setup:
    """The benchmark's inputs: one per case, for every path."""

    def __init__(self, weights: Path, workdir: Path, family: str, size: int, steps: int) -> None:
        self.weights, self.workdir, self.family = weights, workdir, family
        self.size, self.steps = size, steps
        self.clocks: list[str] = []  # nvidia-smi's readings, before and after the runs
        unet_file = weights / "base/unet/diffusion_pytorch_model.safetensors"
        self.lora = write_lora(unet_file, workdir / "lora.safetensors")
        self.control = workdir / "control.png"
        edges = np.zeros((size, size), np.uint8)
        edges[size // 4 : 3 * size // 4 : 8, size // 4 : 3 * size // 4] = 255  # stripes
        Image.fromarray(edges).convert("RGB").save(self.control)
        self.portrait = workdir / "portrait.png"
        Image.open(PORTRAIT).convert("RGB").resize((size, size)).save(self.portrait)
        self.controlnet_entry = UNION_ENTRY if family == "sdxl" else KIND_ENTRIES["canny"]
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=workdir)
        handler.log_message = lambda *args: None
        self.files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.files.serve_forever, daemon=True).start()
        # Our paths fetch the LoRA from that loopback server and read the control image: the
        # Generator through its settings, Cog's server through its environment.
        self.settings = replace(
            Settings.from_env(), private_networks=networks("127.0.0.1"), local_input_paths=True
        )
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1"]))
        self.server_env = {"ALLOW_PRIVATE_URLS": "127.0.0.1", "ALLOW_LOCAL_INPUT_PATHS": "1",
                           "NO_PROXY": no_proxy, "no_proxy": no_proxy}  # fmt: skip

    def supports(self, case: str) -> bool:
        if case == "refiner":
            return self.family == "sdxl" and (self.weights / "refiner/model_index.json").exists()
        if case == "controlnet":
            return (self.weights / self.controlnet_entry / "config.json").exists()
        if case == "previews":
            return (self.weights / "taesd/config.json").exists()
        if case == "upscale":
            return any((self.weights / "upscaler").glob("*.safetensors"))
        if case == "face_fix":
            return any((self.weights / "face_detector").glob("*.onnx"))
        return case in CASES

    def inputs(self, case: str) -> dict:
        """predict()'s inputs for the case."""
        inputs = {
            "prompt": PROMPT, "negative_prompt": NEGATIVE, "width": self.size,
            "height": self.size, "num_inference_steps": self.steps, "guidance_scale": 7.5,
            "seed": 1, "scheduler": "DDIM",
        }  # fmt: skip
        extra = {
            "refiner": {"refine": "expert_ensemble_refiner", "high_noise_frac": 0.8},
            "lora": {"lora_weights": [self.lora_url], "lora_scales": [0.8]},
            "controlnet": {
                "controlnet_1": "canny",
                "controlnet_1_image": str(self.control),
                "controlnet_1_preprocess": False,
            },  # fmt: skip
            "deepcache": {"deepcache_interval": 3},
            "previews": {"preview_every": 10},
            "upscale": {"upscale": 2},  # the txt2img image, then 2x by the upscaler
            # The portrait as given (no generation), its face repainted at the native size.
            "face_fix": {"image": str(self.portrait), "prompt_strength": 0, "face_fix": True},
        }
        return inputs | extra.get(case, {})

    @property
    def lora_url(self) -> str:
        return f"http://127.0.0.1:{self.files.server_port}/lora.safetensors"


class Ours:
    """Our Generator in-process: the predictor's work without the HTTP server."""

    def __init__(self, setup: Setup, fast_path: str | None = None) -> None:
        self.setup = setup
        settings = setup.settings
        if fast_path is not None:
            settings = replace(settings, fast_path=choose(fast_path))
        self.generator = Generator(setup.weights, settings)

    def call(self, case: str) -> Call:
        request = Request.from_inputs(self.setup.inputs(case), local_paths=True)

        def call() -> Outcome:
            generation = self.generator(request)
            image = np.asarray(Image.open(generation.paths[0]).convert("RGB"))
            return Outcome(image, generation.timings, generation.deepcache)

        return call

    def pids(self) -> None:
        return None  # this process

    def close(self) -> None:
        del self.generator


class Served:
    """A sync prediction through Cog's server; images go back as data URIs, as Cog sends them."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.log = open(setup.workdir / "cog-server.log", "w")
        self.server = CogServer(setup.weights, self.log, env=setup.server_env)

    def pids(self) -> list[int]:
        process = psutil.Process(self.server.process.pid)
        return [process.pid, *(p.pid for p in process.children(recursive=True))]

    def call(self, case: str) -> Call:
        inputs = self.setup.inputs(case)
        for name in ("controlnet_1_image", "image"):  # files go over the wire, as clients send them
            if name in inputs:
                inputs[name] = protocol.data_uri(Path(inputs[name]).read_bytes())

        def call() -> Outcome:
            result = self.server.post(inputs).json()
            if result.get("status") != "succeeded":
                raise RuntimeError(f"{case}: {result.get('error') or result}")  # or a 422's detail
            _, data = protocol.read_data_uri(protocol.final_outputs(result)[0])
            image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            logs = result.get("logs", "")
            return Outcome(image, protocol.timings(logs), protocol.deepcache_counts(logs))

        return call

    def close(self) -> None:
        self.server.stop()
        self.log.close()
