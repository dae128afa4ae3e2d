"""The disk tier: repositories through huggingface_hub from a hub-shaped loopback endpoint,
single files through the adapter downloads, one download per model, least recently used out."""

import threading
import time

import pytest
import torch
from model_repos import CIVITAI_VERSIONS, files_tier

from sdcog.common.cancel import PredictionCancelledError
from sdcog.models.model_files import MARKER
from sdcog.request.model_choice import parse


def weight_gets(model_repos, repo: str) -> int:
    return model_repos.hub.downloads(repo)


def test_configs_come_first_then_only_the_safetensors_the_pipeline_loads(
    model_repos, tiny_weights, tmp_path
):
    tier = files_tier(model_repos, tiny_weights, tmp_path)
    seen = []
    before = weight_gets(model_repos, "org/sd1-fp16")  # other tests' downloads

    def check(folder):
        seen.append((weight_gets(model_repos, "org/sd1-fp16") - before, sorted(
            str(p.relative_to(folder)) for p in folder.rglob("*.json")
        )))  # fmt: skip

    folder = tier.folder(parse("org/sd1-fp16", "base_model"), check, None)
    assert seen[0][0] == 0 and "unet/config.json" in seen[0][1]  # no weights before the check
    weights = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.safetensors"))
    # On a CPU (fp32) the full-precision files, not the fp16 variants beside them.
    assert weights == ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                       "vae/diffusion_pytorch_model.safetensors"]  # fmt: skip
    assert not list(folder.rglob(".cache"))


def test_fp16_variants_are_fetched_for_an_fp16_device(model_repos, tiny_weights, tmp_path):
    tier = files_tier(model_repos, tiny_weights, tmp_path, dtype=torch.float16)
    folder = tier.folder(parse("org/sd1-fp16", "base_model"), lambda f: None, None)
    assert all(".fp16." in p.name for p in folder.rglob("*.safetensors"))
    assert '"variant": "fp16"' in (folder / MARKER).read_text()


def test_a_model_the_request_does_not_fit_costs_no_weights(model_repos, tiny_weights, tmp_path):
    tier = files_tier(model_repos, tiny_weights, tmp_path)

    def refuse(folder):
        raise ValueError("controlnet_1: does not fit")

    before = weight_gets(model_repos, "org/sd2")
    with pytest.raises(ValueError, match="controlnet_1"):
        tier.folder(parse("org/sd2", "base_model"), refuse, None)
    assert weight_gets(model_repos, "org/sd2") == before


def test_a_repository_of_pickles_is_refused_naming_the_input(model_repos, tiny_weights, tmp_path):
    tier = files_tier(model_repos, tiny_weights, tmp_path)
    before = weight_gets(model_repos, "org/pickles")
    pickled = r"its unet has only pickled weights \(unet/diffusion_pytorch_model.bin\)"
    with pytest.raises(ValueError, match=rf"^base_model: org/pickles: {pickled}"):
        tier.folder(parse("org/pickles", "base_model"), lambda f: None, None)
    assert weight_gets(model_repos, "org/pickles") == before
    assert not any(p.endswith(".bin") for m, p in model_repos.hub.requests if m == "GET")


def test_revisions_and_missing_repositories(model_repos, tiny_weights, tmp_path):
    tier = files_tier(model_repos, tiny_weights, tmp_path)
    commit = model_repos.hub.commit("org/sd1")
    folder = tier.folder(parse(f"org/sd1@{commit}", "base_model"), lambda f: None, None)
    assert (folder / "unet/diffusion_pytorch_model.safetensors").exists()
    with pytest.raises(ValueError, match="^base_model: org/sd1 has no revision v9"):
        tier.folder(parse("org/sd1@v9", "base_model"), lambda f: None, None)
    with pytest.raises(ValueError, match="^vae: no Hugging Face repository org/none"):
        tier.folder(parse("org/none", "vae"), lambda f: None, None)


@pytest.mark.parametrize("form", ["url", "air"])
def test_a_single_file_is_converted_once_and_its_download_dropped(
    model_repos, tiny_weights, tmp_path, form
):
    tier = files_tier(model_repos, tiny_weights, tmp_path)
    text = model_repos.urls["sd2"] if form == "url" else model_repos.air("sd2")
    air_path = f"api/download/models/{CIVITAI_VERSIONS['sd2']}"
    air_before = model_repos.files.count(air_path)
    folder = tier.folder(parse(text, "base_model"), lambda f: None, None)
    assert (folder / "unet/diffusion_pytorch_model.safetensors").exists()
    assert "v_prediction" in (folder / "scheduler/scheduler_config.json").read_text()
    assert not list((tmp_path / "models/downloads").glob("*.safetensors"))
    if form == "air":
        assert model_repos.files.count(air_path) - air_before == 1
    before = len(model_repos.files.requests)
    assert tier.folder(parse(text, "base_model"), lambda f: None, None) == folder
    assert len(model_repos.files.requests) == before  # from the disk cache


def test_concurrent_requests_for_one_model_download_it_once(model_repos, tiny_weights, tmp_path):
    tiers = [files_tier(model_repos, tiny_weights, tmp_path) for _ in range(3)]
    model_repos.hub.delays["/org/sdxl/resolve/" + model_repos.hub.commit("org/sdxl")
                           + "/unet/diffusion_pytorch_model.safetensors"] = 0.5  # fmt: skip
    before = weight_gets(model_repos, "org/sdxl")
    folders = []
    threads = [
        threading.Thread(
            target=lambda t=t: folders.append(
                t.folder(parse("org/sdxl", "base_model"), lambda f: None, None)
            )  # fmt: skip
        )
        for t in tiers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    model_repos.hub.delays.clear()
    assert len(set(folders)) == 1 and len(folders) == 3
    assert weight_gets(model_repos, "org/sdxl") - before == 4  # unet, vae, two text encoders


def test_least_recently_used_folders_go_first(model_repos, tiny_weights, tmp_path):
    probe = files_tier(model_repos, tiny_weights, tmp_path / "probe")
    size = sum(
        p.stat().st_size
        for p in probe.folder(parse("org/sd1", "base_model"), lambda f: None, None).rglob("*")
        if p.is_file()
    )
    tier = files_tier(model_repos, tiny_weights, tmp_path, model_cache_bytes=int(size * 2.5))
    get = {name: (lambda n=name: tier.folder(parse(n, "base_model"), lambda f: None, None))
           for name in ("org/sd1", "org/pinned-copy", "org/sd1-fp16")}  # fmt: skip
    a, b = get["org/sd1"](), get["org/pinned-copy"]()
    time.sleep(0.01)
    assert get["org/sd1"]() == a  # used again: now the most recent
    c = get["org/sd1-fp16"]()
    assert a.exists() and c.exists() and not b.exists()


def test_a_cancelled_prediction_stops_waiting_for_the_hub(model_repos, tiny_weights, tmp_path):
    tier = files_tier(model_repos, tiny_weights, tmp_path)
    path = "/org/sd2/resolve/" + model_repos.hub.commit("org/sd2") + "/unet/config.json"
    model_repos.hub.delays[path] = 3
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    start = time.monotonic()
    try:
        with pytest.raises(PredictionCancelledError):
            tier.folder(parse("org/sd2", "base_model"), lambda f: None, stop)
    finally:
        model_repos.hub.delays.clear()
    assert time.monotonic() - start < 2


def test_hf_token_goes_to_the_hub_and_nowhere_else(model_repos, tiny_weights, tmp_path):
    tokens = {"HF_TOKEN": "hf_secret", "CIVITAI_TOKEN": "civitai_secret"}
    tier = files_tier(model_repos, tiny_weights, tmp_path, tokens=tokens)
    start, files_start = len(model_repos.hub.authorizations), len(model_repos.files.authorizations)
    tier.folder(parse("org/vae-sd", "vae"), lambda f: None, None)
    sent = model_repos.hub.authorizations[start:]
    assert sent and all(auth == "Bearer hf_secret" for _, auth in sent)
    tier.folder(parse(model_repos.urls["sd1"], "base_model"), lambda f: None, None)
    # The file server is also CIVITAI_ENDPOINT here: it gets civitai's token, never the hub's.
    assert {auth for _, auth in model_repos.files.authorizations[files_start:]} == {
        "Bearer civitai_secret"
    }
