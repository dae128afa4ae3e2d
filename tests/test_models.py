"""The forms base_model and vae take, the operator's allow-list and the build's own names."""

import pytest

from sdcog.common.pins import FAMILY_PIN_FILES, PIN_FILE, describe, pin_file_of
from sdcog.fetch.references import Reference
from sdcog.request.model_choice import ModelChoice, parse


@pytest.mark.parametrize(
    ("text", "kind", "name"),
    [
        ("emilianJR/chilloutmix_NiPrunedFp32Fix", "hub", "emilianJR/chilloutmix_NiPrunedFp32Fix"),
        ("org/model@v1.0", "hub", "org/model"),
        ("org/model@0123456789abcdef0123456789abcdef01234567", "hub", "org/model"),
        ("civitai:4384@128713", "air", "civitai:4384@128713"),
        ("urn:air:sdxl:checkpoint:civitai:101055@128078", "air", "civitai:101055@128078"),
        ("https://civitai.com/api/download/models/128713", "url", None),
        ("https://example.com/models/dreamshaper.safetensors", "url", None),
    ],
)
def test_each_form_is_recognised(text, kind, name):
    reference = parse(text, "base_model")
    assert reference.kind == kind
    assert reference.name == (name or text)


def test_a_revision_is_kept_apart_from_the_repository():
    reference = parse("org/model@fp16-branch", "base_model")
    assert (reference.repo, reference.revision) == ("org/model", "fp16-branch")
    assert parse("org/model", "vae").revision == "main"


@pytest.mark.parametrize(
    "text",
    ["https://example.com/model.ckpt", "https://example.com/vae.pt", "http://x.org/m.bin?dl=1"],
)
def test_pickled_urls_are_refused_naming_the_input(text):
    with pytest.raises(ValueError, match=r"^vae: .*pickled weights"):
        parse(text, "vae")


@pytest.mark.parametrize("text", ["just-a-name", "a/b/c", "ftp://host/m.safetensors", "civitai:1"])
def test_other_strings_are_refused_with_the_forms(text):
    with pytest.raises(ValueError, match=r"^base_model: .*owner/repo\[@revision\]"):
        parse(text, "base_model")


@pytest.mark.parametrize("text", ["../..", "org/..", "-x/y", "x./y", "a--b/c", "o" * 97 + "/y"])
@pytest.mark.parametrize("input_name", ["base_model", "vae", "lora_weights"])
def test_repository_ids_the_hub_refuses_are_refused_naming_the_input(text, input_name):
    """Before anything is fetched (huggingface_hub's own rule, said in our words)."""
    refusal = rf"^{input_name}: .* is not a Hugging Face owner/repo the hub allows"
    with pytest.raises(ValueError, match=refusal):
        if input_name == "lora_weights":
            Reference.parse(text, input_name)
        else:
            parse(text, input_name)


def resolve(choice: ModelChoice, text: str | None, input_name: str = "base_model"):
    return choice.resolve(parse(text, input_name) if text else None)


def test_the_allow_list_takes_shell_patterns_and_names_the_input():
    choice = ModelChoice(None, ("org/*", "civitai:*"))
    assert resolve(choice, "org/a", "base_model").repo == "org/a"
    assert resolve(choice, "urn:air:sd1:checkpoint:civitai:1@2", "base_model").kind == "air"
    with pytest.raises(ValueError, match=r"^vae: other/v is not allowed .*org/\*, civitai:\*"):
        resolve(choice, "other/v@main", "vae")
    with pytest.raises(ValueError, match=r"^base_model: https://.* is not allowed"):
        resolve(choice, "https://example.com/m.safetensors", "base_model")


def test_none_allows_only_the_builds_own(tmp_path):
    pins = tmp_path / "pins.toml"
    pins.write_text(
        '[base]\nrepo = "stable-diffusion-v1-5/stable-diffusion-v1-5"\nrevision = "abc"\n'
        'air = ["civitai:1@2"]\n'
    )
    choice = ModelChoice(pins, ())
    for own in ("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5",
                "civitai:1@2", "urn:air:sd1:checkpoint:civitai:1@2", "", None):  # fmt: skip
        assert resolve(choice, own, "base_model") is None
    with pytest.raises(ValueError, match="none but the build's own"):
        resolve(choice, "org/other", "base_model")
    # The base's names are not the VAE's.
    with pytest.raises(ValueError, match="^vae: "):
        resolve(choice, "runwayml/stable-diffusion-v1-5", "vae")


def test_a_weights_folder_is_described_by_its_own_pin_file_else_the_builds(tmp_path):
    assert pin_file_of(tmp_path) == PIN_FILE  # downloaded elsewhere, say, and moved
    describe(tmp_path, FAMILY_PIN_FILES["sdxl"])
    assert pin_file_of(tmp_path).read_bytes() == FAMILY_PIN_FILES["sdxl"].read_bytes()
