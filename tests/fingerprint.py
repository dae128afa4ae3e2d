"""What the package does, as one digest, to prove that a refactor changed none of it.

    .venv/bin/python tests/fingerprint.py OUT.json

Starts Cog's real server over tiny weights of each family (with the test servers' loopback
file server and hub-shaped endpoint) and sends a fixed list of requests through it: every mode,
ControlNets (preprocessed and not), the IP-Adapter, LoRAs, embeddings, hires fix, outpainting,
previews, DeepCache, schedulers, a requested base_model and vae, the SDXL refiner, and requests
that must fail (a 422 from Cog's schema, refusals from predict()). For each: the HTTP status,
the prediction's status, the sha256 of every output, its logs (without what varies from run to
run: timings, progress bars) and its error; then the served schema. OUT.json holds them all,
and its last line the digest of the rest. Two runs of the same code give the same file."""

import base64
import hashlib
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402
from adapter_files import write_embedding, write_lora  # noqa: E402
from helpers import ServerUnderTest, data_uri, shapes  # noqa: E402
from loopback import FileServer, dead_proxy_env  # noqa: E402
from model_repos import make_model_repos  # noqa: E402
from PIL import Image  # noqa: E402

from sdcog.tools.tiny_weights import write_tiny_weights

# What varies between two runs of the same code: timings, the ports of the loopback servers,
# and tqdm's progress bars. A bar shares its line with whatever is printed while it runs, so
# only the bar is cut, and a line left with nothing but the bar's own title ("Loading
# weights:", whose order between threads varies) is dropped.
TIMINGS = re.compile(r"^(timings \(ms\)|setup \(ms\)).*$", re.M)
BAR = re.compile(r"\s*\d+%\|[^|]*\|\s*\d+/\d+ \[[^\]]*\]")
BAR_TITLE = re.compile(r"^[^:]*:\s*(\x1b\[A)*\s*$")
PORT = re.compile(r"127\.0\.0\.1:\d+")
PHOTO = data_uri(shapes((128, 128)))


def _mask() -> str:
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (32, 32, 96, 96))
    return data_uri(mask)


MASK = _mask()
SMALL = {"prompt": "a lighthouse by the sea", "num_inference_steps": 3, "width": 128,
         "height": 128, "seed": 5}  # fmt: skip


def requests_for(family: str, refs: dict[str, str]) -> list[dict]:
    """The inputs of each request sent to the `family` server."""
    cases = [
        {},
        {"num_outputs": 2, "prompt_weighting": "a1111", "prompt": "a (lighthouse:1.3), sea"},
        {"image": PHOTO, "prompt_strength": 0.6},
        {"image": PHOTO, "mask": MASK},
        {"image": PHOTO, "outpaint_right": 64, "outpaint_blur": 4, "width": None, "height": None},
        {"image": PHOTO, "mask": MASK, "mask_margin": 16, "width": None, "height": None},
        {"controlnet_1": "canny", "controlnet_1_image": PHOTO, "return_control_maps": True},
        {
            "controlnet_1": "openpose",
            "controlnet_1_image": PHOTO,
            "controlnet_2": "depth",
            "controlnet_2_image": PHOTO,
            "controlnet_2_end": 0.5,
        },
        {"ip_adapter_image": PHOTO, "ip_adapter_scale": 0.5},
        {"hires_scale": 1.5, "hires_steps": 2},
        {"preview_every": 1},
        {"deepcache_interval": 2, "num_inference_steps": 6, "deepcache_start": 0.2},
        {"scheduler": "K_EULER_ANCESTRAL", "clip_skip": 1, "output_format": "jpg"},
        {"scheduler": "Euler a", "timestep_spacing": "trailing", "output_format": "webp"},
        {"lora_weights": [refs["lora"]], "lora_scale": 0.7},
        {"lora_weights": [refs["lora"], refs["kohya"]], "lora_scales": [0.5, 1.0]},
        {"textual_inversions": [f"<tok>={refs['embedding']}"], "prompt": "a <tok> lighthouse"},
        {"disable_safety_checker": True, "seed": 7},
        # Refusals and failures
        {"mask": MASK},
        {"width": 1001},
        {"scheduler": "nonsense"},
        {"lora_weights": ["http://127.0.0.1:9/x.ckpt"]},
        {"controlnet_1": "canny"},
        {"base_model": "other/model"},
        {"deepcache_branch": 1},
    ]
    if family == "sd":
        cases += [
            {"base_model": "org/sd1"},
            {"base_model": "org/sd2", "vae": "org/vae-sd"},
            {"base_model": "org/sdxl", "apply_watermark": False},
            {"base_model": "org/sdxl", "refine": "base_image_refiner"},
            {"base_model": "org/sd2", "controlnet_1": "canny", "controlnet_1_image": PHOTO},
            {"refine": "expert_ensemble_refiner"},
        ]
    else:
        cases += [
            {"refine": "expert_ensemble_refiner", "high_noise_frac": 0.7},
            {"refine": "base_image_refiner", "refine_steps": 4},
            {"refine": "base_image_refiner", "refine_steps": 2},
            {"apply_watermark": False},
            {"preview_every": 2, "refine": "expert_ensemble_refiner", "num_inference_steps": 8},
        ]
    return [{k: v for k, v in (SMALL | case).items() if v is not None} for case in cases]


def digest_output(uri: str) -> str:
    header, body = uri.split(",", 1)
    return f"{header} {hashlib.sha256(base64.b64decode(body)).hexdigest()}"


def log_lines(logs: str) -> list[str]:
    lines = []
    for line in TIMINGS.sub("", logs).splitlines():
        if BAR.search(line):
            line = BAR.sub("", line)
            if BAR_TITLE.match(line):
                continue
        if line.strip():
            lines.append(line.strip())
    return lines


def run(server: ServerUnderTest, inputs: dict) -> dict:
    response = server.post(inputs)
    record: dict = {"http": response.status_code}
    body = json.loads(PORT.sub("127.0.0.1:PORT", response.text))
    if response.status_code != 200:
        record["detail"] = body.get("detail")
        return record
    record |= {
        "status": body["status"],
        "output": [digest_output(uri) for uri in body.get("output") or []],
        "logs": log_lines(body.get("logs") or ""),
        "error": body.get("error"),
    }
    return record


def fingerprint(root: Path) -> dict:
    files = FileServer(root / "served")
    weights = {family: root / f"tiny-{family}" for family in ("sd", "sdxl")}
    for family, folder in weights.items():
        write_tiny_weights(folder, family)
    repos = make_model_repos(root / "repos", weights["sd"], files)
    result: dict = {}
    for family, folder in weights.items():
        made = {
            "lora": write_lora(folder, family, root / f"{family}-l.safetensors", seed=1),
            "kohya": write_lora(folder, family, root / f"{family}-k.safetensors", 3, kohya=True),
            "embedding": write_embedding(family, root / f"{family}-e.safetensors", "<tok>", 9),
        }
        refs = {name: files.put(f"{family}/{path.name}", path.read_bytes())
                for name, path in made.items()}  # fmt: skip
        env = {
            "ALLOW_PRIVATE_URLS": "1", **dead_proxy_env(), "HF_ENDPOINT": repos.hub.url,
            "CIVITAI_ENDPOINT": files.url, "ALLOWED_MODELS": "org/*,civitai:*",
            "ADAPTER_CACHE_DIR": str(root / f"{family}-adapters"),
            "MODEL_CACHE_DIR": str(root / f"{family}-models"),
        }  # fmt: skip
        server = ServerUnderTest(folder, root / f"{family}.log", family, env)
        try:
            result[family] = [run(server, inputs) for inputs in requests_for(family, refs)]
            schema = requests.get(f"{server.url}/openapi.json", timeout=30).json()
            result[f"{family} schema"] = hashlib.sha256(
                json.dumps(schema, sort_keys=True).encode()
            ).hexdigest()
        finally:
            server.stop()
    return result


def main() -> None:
    out = Path(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="fingerprint-") as tmp:
        result = fingerprint(Path(tmp))
    text = json.dumps(result, indent=1, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    out.write_text(f"{text}\n{digest}\n")
    print(f"{out}: {digest}")


if __name__ == "__main__":
    main()
