"""The disk tier's bound holds whatever happens: while a model downloads, after a refusal, and
after a server was killed mid-download (its leftovers are removed, unless a download still
holds their lock)."""

import threading

from filelock import FileLock
from model_repos import files_tier

from sdcog.models.model_cache import size
from sdcog.request.model_choice import parse

UNET = "unet/diffusion_pytorch_model.safetensors"


def fetch(tier, repo: str):
    return tier.folder(parse(repo, "base_model"), lambda f: None, None)


def test_the_cache_stays_within_its_bound_while_a_model_downloads(
    model_repos, tiny_weights, tmp_path
):
    probe = files_tier(model_repos, tiny_weights, tmp_path / "probe")
    sizes = {repo: size(fetch(probe, repo)) for repo in ("org/sd1", "org/sd2", "org/sd1-fp16")}
    bound = int(max(sizes.values()) * 2.5)
    tier = files_tier(model_repos, tiny_weights, tmp_path, model_cache_bytes=bound)
    fetch(tier, "org/sd1")
    fetch(tier, "org/sd2")
    peak, done = [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], size(tmp_path / "models/models"))

    slow = f"/org/sd1-fp16/resolve/{model_repos.hub.commit('org/sd1-fp16')}/{UNET}"
    model_repos.hub.delays[slow] = 0.5
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        fetch(tier, "org/sd1-fp16")
    finally:
        done.set()
        watcher.join()
        model_repos.hub.delays.clear()
    assert sum(sizes.values()) > bound >= peak[0] > 0
    assert not list((tmp_path / "models/models").glob("*.part"))


def test_what_a_killed_server_left_is_removed_and_a_download_under_way_kept(
    model_repos, tiny_weights, tmp_path
):
    tier = files_tier(model_repos, tiny_weights, tmp_path)
    models = tmp_path / "models/models"
    for name in ("left", "writing"):
        (models / f"{name}.part/unet").mkdir(parents=True)
        (models / f"{name}.part/unet/x.safetensors").write_bytes(b"x" * 1000)
    with FileLock(tmp_path / "models/locks/writing.lock"):  # another process's download
        fetch(tier, "org/sd1")
        assert (models / "writing.part").exists() and not (models / "left.part").exists()
