"""torch.compile: compiled at setup and warmed up at the native size, images within tolerance of
the eager model; inductor's folder saved once and copied by the next setup; a broken one
replaced; two processes compiling at once; a compile that fails leaves setup eager; requests that
patch the UNet or change its shapes run it eagerly, never compiling inside a request."""

import io
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ServerUnderTest, decode_output
from loopback import dead_proxy_env
from PIL import Image
from torch._dynamo.utils import counters

from sdcog.generate import Generator
from sdcog.request.request import Request
from sdcog.serving.settings import Settings
from sdcog.speed import torch_compile

pytestmark = pytest.mark.slow

SMALL = {"width": 512, "height": 512, "num_inference_steps": 3, "seed": 8}  # the native size


def compiling(cache: Path) -> Settings:
    return replace(Settings.from_env(), compile_mode="default", compile_cache_dir=cache)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("compile-cache")


def fresh_setup(weights: Path, cache: Path) -> Generator:
    """A setup that compiles as a new process would: without the code this one compiled."""
    torch._dynamo.reset()
    return Generator(weights, compiling(cache))


@pytest.fixture(scope="module")
def compiled(make_weights, cache) -> Generator:
    return fresh_setup(make_weights("sd"), cache)


def pixels(generator: Generator, **input) -> np.ndarray:
    """The request's images, stacked."""
    paths = generator(Request(prompt="a cat", **{**SMALL, **input})).paths
    return np.stack([np.asarray(Image.open(path), dtype=np.float64) for path in paths])


def compiles() -> int:
    return counters["stats"]["unique_graphs"]


def test_compiled_at_setup_and_close_to_eager(compiled, make_weights):
    unet = compiled.pipelines.base["txt2img"].unet
    assert unet._compiled_call_impl is not None
    eager = Generator(make_weights("sd"))
    assert np.abs(pixels(compiled) - pixels(eager)).mean() <= 2


def test_patched_requests_run_eagerly_and_leave_it_compiled(compiled, adapter_refs):
    plain = pixels(compiled)
    before = compiles()
    lora = {"lora_weights": (adapter_refs["sd"]["a"],), "lora_scales": (1.0,)}
    assert not np.array_equal(pixels(compiled, **lora), plain)
    assert not np.array_equal(pixels(compiled, deepcache_interval=2), plain)
    assert np.array_equal(pixels(compiled), plain)
    assert compiles() == before


def test_other_shapes_run_eagerly_without_compiling(compiled, make_weights):
    before = compiles()
    other = {"width": 128, "height": 192, "num_outputs": 2}
    eager = Generator(make_weights("sd"))
    assert np.array_equal(pixels(compiled, **other), pixels(eager, **other))
    assert compiles() == before


def files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}  # fmt: skip


def test_saved_once_then_loaded_by_the_next_setup(compiled, make_weights, cache, capsys):
    [saved] = cache.iterdir()
    assert saved.name.startswith("unets-full-default-512-") and saved.is_dir()
    before = files(saved)
    assert any(name.endswith(".so") for name in before)  # the compiled kernels
    again = fresh_setup(make_weights("sd"), cache)
    assert f"compiled the UNets (default) from {saved}," in capsys.readouterr().out
    assert files(saved) == before  # copied, not written again
    assert np.array_equal(pixels(again), pixels(compiled))


def test_the_saved_folder_is_found_from_another_weights_folder(compiled, make_weights, cache,
                                                              tmp_path, capsys):  # fmt: skip
    """Named for the architecture, not the path: a copy of the weights finds the same folder."""
    moved = tmp_path / "weights"
    shutil.copytree(make_weights("sd"), moved)
    [saved] = cache.iterdir()
    fresh_setup(moved, cache)
    assert f"compiled the UNets (default) from {saved}," in capsys.readouterr().out


def test_a_broken_saved_folder_is_replaced(compiled, make_weights, cache, tmp_path, capsys):
    """Truncated kernels, as two processes sharing inductor's folder once left: the compile
    from the saved folder fails, the one from scratch replaces it."""
    [saved] = cache.iterdir()
    broken = tmp_path / saved.name
    shutil.copytree(saved, broken)
    for kernel in broken.rglob("*.so"):
        kernel.write_bytes(kernel.read_bytes()[:100])
    again = fresh_setup(make_weights("sd"), tmp_path)
    out = capsys.readouterr().out
    assert f"compile from {broken} failed (" in out
    assert "compiled the UNets (default) from scratch" in out
    assert [p.name for p in tmp_path.iterdir()] == [saved.name]  # no part or broken folder left
    assert all(kernel.stat().st_size > 100 for kernel in broken.rglob("*.so"))
    assert np.array_equal(pixels(again), pixels(compiled))


def test_a_cache_folder_that_cannot_be_written_costs_only_the_next_start(
    make_weights, tmp_path, capsys
):
    (tmp_path / "file").write_text("not a folder")
    unwritable = tmp_path / "file" / "compile-cache"
    compiled = fresh_setup(make_weights("sd"), unwritable)
    out = capsys.readouterr().out
    assert "compile cache not saved (" in out and "compiled the UNets (default) from scratch" in out
    assert compiled.pipelines.base["txt2img"].unet._compiled_call_impl is not None


def test_two_processes_compiling_at_once(make_weights, tmp_path):
    """Each compiles in its own folder: both end compiled, and one saved folder remains."""
    script = (
        "import sys; from dataclasses import replace; from pathlib import Path\n"
        "from sdcog.generate import Generator; from sdcog.serving.settings import Settings\n"
        "Generator(Path(sys.argv[1]), replace(Settings.from_env(), compile_mode='default',"
        " compile_cache_dir=Path(sys.argv[2])))\n"
    )
    args = [sys.executable, "-c", script, str(make_weights("sd")), str(tmp_path)]
    both = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [process.communicate(timeout=600)[0] for process in both]
    assert [process.returncode for process in both] == [0, 0]
    assert all("compiled the UNets (default) from scratch" in out for out in outs), outs
    [saved] = tmp_path.iterdir()
    assert saved.name.startswith("unets-full-default-512-")


def test_a_failing_compile_leaves_setup_eager(make_weights, tmp_path):
    """A broken C++ toolchain, in a process of its own (inductor remembers its toolchain): setup
    still ends, with the UNets eager, and serves the eager model's images."""
    script = (
        "import sys, torch; from dataclasses import replace; from pathlib import Path\n"
        "torch._inductor.config.cpp.cxx = (None, '/bin/false')\n"
        "from sdcog.generate import Generator; from sdcog.request.request import Request\n"
        "from sdcog.serving.settings import Settings\n"
        "g = Generator(Path(sys.argv[1]), replace(Settings.from_env(), compile_mode='default',"
        " compile_cache_dir=Path(sys.argv[2])))\n"
        "print('compiled:', g.pipelines.base['txt2img'].unet._compiled_call_impl is not None)\n"
        f"[path] = g(Request(prompt='a cat', **{SMALL!r})).paths\n"
        # kept past the process's end, which removes its output folders
        "import shutil; print('image:', shutil.copy(path, sys.argv[3]))\n"
    )
    weights = make_weights("sd")
    cache = tmp_path / "cache"
    run = subprocess.run([sys.executable, "-c", script, str(weights), str(cache),
                          str(tmp_path / "image.png")],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "compile failed, the UNets run eagerly (" in run.stdout
    assert "compiled: False" in run.stdout and not cache.exists()
    [image] = re.findall(r"^image: (.+)$", run.stdout, re.M)
    served = np.asarray(Image.open(image), dtype=np.float64)
    assert np.array_equal(served[None], pixels(Generator(weights)))


def test_regional_compiles_the_repeated_blocks_only(make_weights, tmp_path, capsys):
    settings = replace(compiling(tmp_path), compile_regional=True)
    torch._dynamo.reset()
    regional = Generator(make_weights("sd"), settings)
    out = capsys.readouterr().out
    assert "compiled the UNets' transformer blocks (default) from scratch" in out, out[-600:]
    unet = regional.pipelines.base["txt2img"].unet
    blocks = [m for m in unet.modules() if type(m).__name__ in unet._repeated_blocks]
    assert blocks and all(m._compiled_call_impl is not None for m in blocks)
    assert unet._compiled_call_impl is None
    [saved] = tmp_path.iterdir()
    assert saved.name.startswith("unets-regional-default-512-")
    assert np.abs(pixels(regional) - pixels(Generator(make_weights("sd")))).mean() <= 2


@pytest.mark.server
def test_compiled_through_cogs_server_cold_then_warm(make_weights, tmp_path):
    """Compiled in the worker's setup and run in its prediction thread: the image is within
    tolerance of the eager model's but not the eager image itself (which a server running the
    UNet eagerly would give bit for bit); the second server copies the saved folder and gives
    the same image. Another size still runs (eagerly)."""
    eager = pixels(Generator(make_weights("sd")))[0]
    cache = tmp_path / "cache"
    env = {"SDCOG_COMPILE": "1", "SDCOG_COMPILE_CACHE": str(cache), **dead_proxy_env()}
    served = []
    for run in ("cold", "warm"):
        server = ServerUnderTest(make_weights("sd"), tmp_path / f"{run}.log", "sd", env)
        try:
            [uri] = server.predict(prompt="a cat", **SMALL)["output"]
            other = server.predict(prompt="a cat", **{**SMALL, "width": 128, "height": 192})
        finally:
            server.stop()
        served.append(np.asarray(Image.open(io.BytesIO(decode_output(uri))), dtype=np.float64))
        assert other["status"] == "succeeded"
        log = (tmp_path / f"{run}.log").read_text()
        [saved] = cache.iterdir()
        origin = "from scratch" if run == "cold" else f"from {saved},"
        assert f"compiled the UNets (default) {origin}" in log, log[-2000:]
    cold, warm = served
    assert np.array_equal(cold, warm)
    assert not np.array_equal(cold, eager) and np.abs(cold - eager).mean() <= 2


def test_modes():
    for value, expected in (("0", None), ("1", "default"),
                            ("reduce-overhead", "reduce-overhead")):  # fmt: skip
        assert Settings.from_env({"SDCOG_COMPILE": value}).compile_mode == expected
    assert torch_compile.mode(None, cuda=True) == "default"  # on by default on CUDA
    assert torch_compile.mode("", cuda=False) is None  # off on a CPU
    assert torch_compile.mode("0", cuda=True) is None
    # Unset: compiled on a CUDA machine, eager on any other
    assert Settings.from_env({}).compile_mode == ("default" if torch.cuda.is_available() else None)
    assert not Settings.from_env({"SDCOG_COMPILE_SCOPE": "full"}).compile_regional
    with pytest.raises(ValueError, match="SDCOG_COMPILE_SCOPE: 'blocks'; allowed: full, regional"):
        Settings.from_env({"SDCOG_COMPILE_SCOPE": "blocks"})
