"""script/bench on tiny weights: every path and case runs, our image is diffusers' own, and the
report carries ratios, stage timings, setup and memory."""

import re

import pytest

from sdcog.tools import bench

pytestmark = [pytest.mark.server, pytest.mark.slow]


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
    assert re.search(r"^\| txt2img \| server \|( \d+ \|){9}$", report, re.M)  # stages + transfer
    # Same weights, seed, scheduler and inputs: our image is the plain diffusers call's.
    assert "txt2img image: mean abs diff 0.00/255" in report
    assert re.search(r"Setup, generator: [\d.]+ s \([\d.]+x the plain read\)", report)
    assert re.search(r"DeepCache \(interval 3\): [\d.]+x faster than plain, 2 of 3 UNet", report)


def test_bench_sdxl_refiner_and_union_controlnet(make_weights, capsys):
    bench.main([str(make_weights("sdxl")), "--size", "128", "--steps", "4", "--runs", "1",
                "--cases", "refiner,controlnet", "--paths", "diffusers,generator",
                "--interleave"])  # fmt: skip
    report = capsys.readouterr().out
    for case in ("refiner", "controlnet"):
        for path in ("diffusers", "generator"):
            assert re.search(rf"^\| {case} \| {path} \| [\d.]+ \|", report, re.M), (case, path)
    assert "### SDXL 128x128, 4 steps" in report
