"""The runtime's settings: read from the environment once, at setup (Settings.from_env), and
handed to what uses them. No other runtime module reads the environment, and no code writes it
(but for pose.py, which turns onnxruntime's telemetry off before importing it): a tool or a test
that wants other settings builds its own.

| variable | setting | default |
|---|---|---|
| WEIGHTS_DIR | weights_dir | weights/ beside predict.py |
| SDCOG_FAST_PATH | fast_path | all on CUDA; fused_qkv on a CPU (fast_path.py) |
| SDCOG_COMPILE | compile_mode | default mode on CUDA, off on a CPU; 0 off, 1 default, or a mode |
| SDCOG_COMPILE_SCOPE | compile_regional | full; regional: the UNets' repeated blocks only |
| SDCOG_COMPILE_CACHE | compile_cache_dir | compile-cache/ in the weights folder |
| ALLOW_PRIVATE_URLS | private_networks | none; 1: all; or a comma-separated list of networks |
| ALLOW_LOCAL_INPUT_PATHS | local_input_paths | off; 1: file inputs may be server paths |
| ADAPTER_CACHE_DIR | adapter_cache_dir | sdcog-adapters in the temporary folder |
| ADAPTER_CACHE_BYTES | adapter_cache_bytes | 10 GiB |
| ADAPTER_MAX_BYTES | adapter_max_bytes | 2 GiB, per file |
| ADAPTER_TIMEOUT_S | adapter_timeout_s | 120, per download (redirects included) |
| MODEL_CACHE_DIR | model_cache_dir | sdcog-models in the temporary folder |
| MODEL_CACHE_GB | model_cache_bytes | 50: base_model/vae files on disk |
| MODEL_RAM_GB | model_ram_bytes | 16: base_model/vae pipelines kept in CPU RAM |
| MODEL_TIMEOUT_S | model_timeout_s | 3600, per base_model/vae file |
| ALLOWED_MODELS | allowed_models | any; or comma-separated patterns (owner/*, civitai:*, none) |
| HF_ENDPOINT, CIVITAI_ENDPOINT | hf_endpoint, civitai_endpoint | the public sites (trusted) |
| HF_TOKEN, CIVITAI_TOKEN | tokens | none; each goes to its own host only |
| SDCOG_STATUS_FILE | status_file | none (script/serve's supervisor sets it) |
"""

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.pins import DEFAULT_WEIGHTS_DIR
from ..security import netguard
from ..speed import fast_path, torch_compile

TOKEN_VARIABLES = ("HF_TOKEN", "CIVITAI_TOKEN")


@dataclass(frozen=True)
class Settings:
    weights_dir: Path = DEFAULT_WEIGHTS_DIR
    fast_path: tuple[str, ...] = field(default_factory=fast_path.choose)
    compile_mode: str | None = field(default_factory=torch_compile.mode)
    compile_regional: bool = False
    compile_cache_dir: Path | None = None  # None: compile-cache/ in the weights folder
    private_networks: netguard.Networks = ()
    local_input_paths: bool = False
    adapter_cache_dir: Path = field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "sdcog-adapters"
    )
    adapter_cache_bytes: int = 10 * 1024**3
    adapter_max_bytes: int = 2 * 1024**3
    adapter_timeout_s: float = 120.0
    model_cache_dir: Path = field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "sdcog-models"
    )
    model_cache_bytes: int = 50 * 1024**3
    model_ram_bytes: int = 16 * 1024**3
    model_timeout_s: float = 3600.0
    allowed_models: tuple[str, ...] = ("*",)
    hf_endpoint: str = "https://huggingface.co"
    civitai_endpoint: str = "https://civitai.com"
    tokens: Mapping[str, str] = field(default_factory=dict)  # variable -> token
    status_file: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        def given(name: str) -> str | None:
            value = environ.get(name, "").strip()
            return value or None

        defaults = cls()
        return cls(
            weights_dir=Path(given("WEIGHTS_DIR") or defaults.weights_dir),
            fast_path=fast_path.choose(given("SDCOG_FAST_PATH")),
            compile_mode=torch_compile.mode(given("SDCOG_COMPILE")),
            compile_regional=torch_compile.scope(given("SDCOG_COMPILE_SCOPE")) == "regional",
            compile_cache_dir=Path(cache) if (cache := given("SDCOG_COMPILE_CACHE")) else None,
            private_networks=netguard.networks(given("ALLOW_PRIVATE_URLS")),
            local_input_paths=given("ALLOW_LOCAL_INPUT_PATHS") == "1",
            adapter_cache_dir=Path(given("ADAPTER_CACHE_DIR") or defaults.adapter_cache_dir),
            adapter_cache_bytes=int(given("ADAPTER_CACHE_BYTES") or defaults.adapter_cache_bytes),
            adapter_max_bytes=int(given("ADAPTER_MAX_BYTES") or defaults.adapter_max_bytes),
            adapter_timeout_s=float(given("ADAPTER_TIMEOUT_S") or defaults.adapter_timeout_s),
            model_cache_dir=Path(given("MODEL_CACHE_DIR") or defaults.model_cache_dir),
            # 0 and `none` are values here, not "unset".
            model_cache_bytes=_either(
                gigabytes(given("MODEL_CACHE_GB")), defaults.model_cache_bytes
            ),
            model_ram_bytes=_either(gigabytes(given("MODEL_RAM_GB")), defaults.model_ram_bytes),
            model_timeout_s=float(given("MODEL_TIMEOUT_S") or defaults.model_timeout_s),
            allowed_models=_either(patterns(given("ALLOWED_MODELS")), defaults.allowed_models),
            hf_endpoint=given("HF_ENDPOINT") or defaults.hf_endpoint,
            civitai_endpoint=given("CIVITAI_ENDPOINT") or defaults.civitai_endpoint,
            tokens={name: token for name in TOKEN_VARIABLES if (token := given(name))},
            status_file=Path(status) if (status := given("SDCOG_STATUS_FILE")) else None,
        )

    @property
    def trusted_origins(self) -> frozenset[netguard.Origin]:
        """The operator's own endpoints: mirrors it trusts, whatever their address (a private
        one included); what they redirect to is checked as any URL."""
        return netguard.origins(
            {"HF_ENDPOINT": self.hf_endpoint, "CIVITAI_ENDPOINT": self.civitai_endpoint}
        )


def _either(value: Any, default: Any) -> Any:
    return default if value is None else value


def gigabytes(value: str | None) -> int | None:
    """A size in GB (decimal fractions too: 0.5) as bytes of GiB."""
    if value is None:
        return None
    try:
        size = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a size in GB") from None
    if size < 0:
        raise ValueError(f"{value!r}: a size in GB cannot be negative")
    return int(size * 1024**3)


def patterns(value: str | None) -> tuple[str, ...] | None:
    """ALLOWED_MODELS: comma-separated patterns; `none` allows only the build's own pins."""
    if value is None:
        return None
    given = tuple(p.strip() for p in value.split(",") if p.strip())
    return () if given == ("none",) else given
