"""cog.yaml against Cog's documented keys and types: https://cog.run/yaml and the CLI's
config schema (pkg/config/data/config_schema_v1.0.json), which refuses unknown keys."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# Key -> type, or a dict for a section's own keys: the reference's keys for this Cog version.
DOCUMENTED = {
    "build": {
        "cuda": str,
        "cudnn": str,
        "gpu": bool,
        "pre_install": list,
        "python_packages": list,
        "python_requirements": str,
        "python_version": (str, float),
        "run": list,
        "sdk_version": str,
        "system_packages": list,
    },
    "concurrency": {"max": int, "default_target": int},
    "environment": list,
    "image": str,
    "model": str,
    "predict": str,
    "run": str,
    "train": str,
    "weights": list,
}


def problems(config: dict, documented: dict, where: str = "") -> list[str]:
    found = []
    for key, value in config.items():
        expected = documented.get(key)
        if expected is None:
            found.append(f"{where}{key}: not a documented key")
        elif isinstance(expected, dict):
            if not isinstance(value, dict):
                found.append(f"{where}{key}: must be a mapping")
            else:
                found += problems(value, expected, f"{where}{key}.")
        elif not isinstance(value, expected):
            names = (
                "/".join(t.__name__ for t in expected)
                if isinstance(expected, tuple)
                else expected.__name__
            )
            found.append(f"{where}{key}: must be a {names}, not {value!r}")
    return found


def test_cog_yaml_uses_documented_keys_and_types():
    config = yaml.safe_load((ROOT / "cog.yaml").read_text())
    assert problems(config, DOCUMENTED) == []
    assert config["predict"] == "predict.py:Predictor"
    assert (ROOT / config["build"]["python_requirements"]).is_file()
    assert all(isinstance(p, str) for p in config["build"]["system_packages"])


def test_the_check_catches_typos_and_wrong_types():
    bad = {"build": {"gpu": "yes", "python_verison": "3.11"}, "predcit": "predict.py:Predictor"}
    assert problems(bad, DOCUMENTED) == [
        "build.gpu: must be a bool, not 'yes'",
        "build.python_verison: not a documented key",
        "predcit: not a documented key",
    ]


def test_the_container_installs_the_no_deps_requirements_as_pinned():
    """spandrel goes in without the torchvision it requires (requirements-nodeps.txt); the
    container's build.run line installs exactly those pins."""
    config = yaml.safe_load((ROOT / "cog.yaml").read_text())
    lines = (ROOT / "requirements-nodeps.txt").read_text().splitlines()
    pins = [line for line in lines if line and not line.startswith("#")]
    assert config["build"]["run"] == [f"pip install --no-deps {' '.join(pins)}"]
