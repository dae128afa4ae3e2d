"""Settings: read from the environment once, each variable to its setting, defaults without."""

import ipaddress
import tempfile
from pathlib import Path

from sdcog.common.pins import DEFAULT_WEIGHTS_DIR
from sdcog.serving.settings import Settings


def test_every_variable_reaches_its_setting():
    settings = Settings.from_env({
        "WEIGHTS_DIR": "/w", "SDCOG_FAST_PATH": "none", "SDCOG_COMPILE": "reduce-overhead",
        "SDCOG_COMPILE_SCOPE": "regional", "SDCOG_COMPILE_CACHE": "/cc",
        "ALLOW_PRIVATE_URLS": "10.0.0.0/8,127.0.0.1", "ALLOW_LOCAL_INPUT_PATHS": "1",
        "ADAPTER_CACHE_DIR": "/c", "ADAPTER_CACHE_BYTES": "5", "ADAPTER_MAX_BYTES": "6",
        "ADAPTER_TIMEOUT_S": "7.5", "HF_ENDPOINT": "http://hf", "CIVITAI_ENDPOINT": "http://cv",
        "HF_TOKEN": "h", "CIVITAI_TOKEN": " c ", "SDCOG_STATUS_FILE": "/s.json",
    })  # fmt: skip
    assert settings == Settings(
        weights_dir=Path("/w"), fast_path=(), compile_mode="reduce-overhead",
        compile_regional=True, compile_cache_dir=Path("/cc"),
        private_networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1")),
        local_input_paths=True, adapter_cache_dir=Path("/c"), adapter_cache_bytes=5,
        adapter_max_bytes=6, adapter_timeout_s=7.5, hf_endpoint="http://hf",
        civitai_endpoint="http://cv", tokens={"HF_TOKEN": "h", "CIVITAI_TOKEN": "c"},
        status_file=Path("/s.json"),
    )  # fmt: skip


def test_defaults_when_nothing_is_set():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.weights_dir == DEFAULT_WEIGHTS_DIR
    assert settings.private_networks == () and not settings.local_input_paths
    assert settings.adapter_cache_dir == Path(tempfile.gettempdir()) / "sdcog-adapters"
    assert (settings.adapter_max_bytes, settings.adapter_timeout_s) == (2 * 1024**3, 120.0)
    assert settings.compile_mode is None and settings.tokens == {}
    assert Settings.from_env({"ALLOW_PRIVATE_URLS": "1"}).private_networks is None
