"""script/bench on tiny weights: every path and case runs, our image is diffusers' own, and the
report carries ratios, stage timings, setup and memory."""

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from sdcog.tools import bench


@pytest.mark.server
@pytest.mark.slow
def test_bench_compares_the_paths_in_one_run(make_weights, tmp_path, capsys):
    out = tmp_path / "BENCHMARKS.md"
    paths = "diffusers,generator:none,generator,server"
    weights = str(make_weights("sd"))
    bench.main([weights, "--size", "128", "--steps", "3", "--runs", "2", "--paths", paths,
                "--out", str(out)])  # fmt: skip
    report = out.read_text()
    assert report.strip() in capsys.readouterr().out  # printed, and appended to the file
    row = r"^\| (\w+) \| ([\w:]+) \| ([\d.]+) \| [\d.-]+ \| ([\d.-]+) \| ([\d.]+) GB \|$"
    cells = {
        (case, path): (float(median), ratio, float(gb))
        for case, path, median, ratio, gb in re.findall(row, report, re.M)
    }
    for case in ("txt2img", "lora", "controlnet"):
        for path in ("diffusers", "generator:none", "generator", "server"):
            median, ratio, gb = cells[case, path]
            assert median > 0 and gb > 0
        assert cells[case, "diffusers"][1] == "1.000"
    assert ("deepcache", "generator") in cells and ("deepcache", "diffusers") not in cells
    assert re.search(r"^\| txt2img \| server \|( \d+ \|){11}$", report, re.M)  # stages + transfer
    # The finishing cases, ours only: the upscaler's and the face fix's stages take time.
    assert ("upscale", "generator") in cells and ("upscale", "diffusers") not in cells
    stage = r"^\| {} \| generator \|(?: \d+ \|){{{}}} ([1-9]\d*) \|"
    assert re.search(stage.format("upscale", 6), report, re.M)  # the upscale column
    assert re.search(stage.format("face_fix", 5), report, re.M)  # the face fix column
    # Same weights, seed, scheduler and inputs: our image is the plain diffusers call's.
    assert "txt2img image: mean abs diff 0.00/255" in report
    assert re.search(r"Setup, generator: [\d.]+ s \([\d.]+x the plain read\)", report)
    assert re.search(r"DeepCache \(interval 3\): [\d.]+x faster than plain, 2 of 3 UNet", report)
    served = r"Server / in-process \(generator\): txt2img [\d.]+x, lora [\d.]+x, controlnet [\d.]+x"
    assert re.search(served, report)


@pytest.mark.server
@pytest.mark.slow
def test_a_failed_path_stops_its_server(make_weights, monkeypatch):
    """A prediction that fails ends the bench, and takes Cog's server and its worker with it."""
    seen: list[int] = []
    real_pids = bench.paths.Served.pids
    monkeypatch.setattr(bench.paths.Served, "pids",
                        lambda self: seen.extend(real_pids(self)) or real_pids(self))  # fmt: skip
    real_inputs = bench.paths.Setup.inputs
    monkeypatch.setattr(bench.paths.Setup, "inputs", lambda self, case: real_inputs(self, case)
                        | {"num_outputs": 99})  # fmt: skip
    with pytest.raises(RuntimeError, match="num_outputs"):
        bench.main([str(make_weights("sd")), "--size", "128", "--steps", "2", "--runs", "1",
                    "--cases", "txt2img", "--paths", "server"])  # fmt: skip
    assert len(seen) >= 2  # the server and its worker were up
    alive = [pid for pid in seen if psutil.pid_exists(pid)
             and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]  # fmt: skip
    assert alive == []


@pytest.mark.server
@pytest.mark.slow
def test_server_gap_preset_interleaves_generator_and_server(make_weights, capsys):
    """--preset server-gap sets the comparison's defaults; options given beside it still win."""
    bench.main([str(make_weights("sd")), "--preset", "server-gap", "--size", "128",
                "--steps", "2", "--runs", "2", "--cases", "txt2img,lora"])  # fmt: skip
    report = capsys.readouterr().out
    assert "2 timed runs per cell" in report and "paths interleaved run by run" in report
    rows = re.findall(r"^\| (\w+) \| ([\w:]+) \| [\d.]+ \|", report, re.M)
    assert set(rows) == {("lora", "generator"), ("lora", "server"),
                         ("txt2img", "generator"), ("txt2img", "server")}  # fmt: skip
    assert re.search(r"Server / in-process \(generator\): txt2img [\d.]+x, lora [\d.]+x", report)


@pytest.mark.slow
def test_bench_sdxl_refiner_and_union_controlnet(make_weights, capsys):
    bench.main([str(make_weights("sdxl")), "--size", "128", "--steps", "4", "--runs", "1",
                "--cases", "refiner,controlnet", "--paths", "diffusers,generator",
                "--interleave"])  # fmt: skip
    report = capsys.readouterr().out
    for case in ("refiner", "controlnet"):
        for path in ("diffusers", "generator"):
            assert re.search(rf"^\| {case} \| {path} \| [\d.]+ \|", report, re.M), (case, path)
    assert "### SDXL 128x128, 4 steps" in report


def test_gpu_clocks_are_read_from_nvidia_smi(tmp_path, monkeypatch):
    """The report's clocks line comes from nvidia-smi's answer (an executable standing in for it
    here: this machine has no GPU), and is absent without one."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert bench.paths.read_gpu_clocks() is None
    smi = tmp_path / "nvidia-smi"
    answer = "1980 MHz, 1980 MHz, 2619 MHz, 120.5 W, 41"
    smi.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\necho "{answer}"\n')
    smi.chmod(0o755)
    reading = bench.paths.read_gpu_clocks()
    assert reading == answer
    assert "--query-gpu=clocks.sm,clocks.max.sm" in (tmp_path / "args").read_text()
    line = bench.paths.gpu_clocks([reading, reading])
    assert line.startswith("before: 1980 MHz") and "; after: 1980 MHz" in line


@pytest.mark.server
@pytest.mark.slow
def test_gpu_bench_dry_run_on_tiny_weights(tmp_path):
    """script/gpu-bench, the device call's script, runs here on tiny weights (TINY=1)."""
    root = Path(__file__).parent.parent
    env = {**os.environ, "OUT": str(tmp_path / "out"), "W": str(tmp_path / "w"), "TINY": "1",
           "PYTHON": sys.executable, "PARTS": "sd-gap finishing",
           "BENCH_EXTRA": "--size 128 --steps 2 --runs 1 --cases txt2img"}  # fmt: skip
    run = subprocess.run(["bash", "script/gpu-bench"], cwd=root, env=env, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    assert "rc 0" in run.stdout and "] done" in run.stdout
    report = (tmp_path / "out" / "gap-sd.md").read_text()
    assert re.search(r"Server / in-process \(generator\): txt2img [\d.]+x", report)
    assert "| txt2img | generator |" in (tmp_path / "out" / "finishing-sd.md").read_text()
    assert "torch" in (tmp_path / "out" / "env.txt").read_text()


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_bench_swap_times_each_tier(make_weights, family, capsys):
    from sdcog.tools import bench_swap

    bench_swap.main([str(make_weights(family)), "--runs", "2"])
    out = capsys.readouterr().out
    rows = re.findall(
        r"^(disk -> device, page cache \w+) +([\d.]+) +([\d.]+) +([\d.]+)$", out, re.M
    )
    assert [name for name, *_ in rows] == [
        "disk -> device, page cache dropped", "disk -> device, page cache warm",
    ]  # fmt: skip
    assert all(float(low) <= float(median) <= float(high) for _, median, low, high in rows)
    assert "a warm swap is a pointer switch" in out  # no CUDA here: one tier
