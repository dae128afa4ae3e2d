"""The README and docs/ hold to the code: every input of the served schema is in the README's
brief list and in docs/inputs.md, and every link between the pages lands on a file and a
heading that exist."""

import json
import re
from pathlib import Path

import pytest

from sdcog.common.protocol import error_message
from sdcog.dialects.tasks import DIALECTS

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
INPUTS = sorted(
    json.loads((ROOT / ".cog/openapi_schema.json").read_text())["components"]["schemas"]["Input"][
        "properties"
    ]
)


def named(text: str) -> set[str]:
    return set(re.findall(r"`([A-Za-z0-9_]+)`", text))


def test_the_readme_names_every_input():
    brief = (ROOT / "README.md").read_text().split("## The inputs in brief", 1)[1]
    brief = brief.split("\n## ", 1)[0]
    # A ControlNet slot's inputs are named for the first slot; `_start` stands for each suffix.
    names = named(brief) | {f"controlnet_1{s}" for s in re.findall(r"`(_[a-z_]+)`", brief)}
    slots = {re.sub(r"^controlnet_[23]", "controlnet_1", name) for name in INPUTS}
    assert sorted(slots - names) == []


def test_the_inputs_page_names_every_input():
    names = named((ROOT / "docs/inputs.md").read_text())
    slot_form = {n: re.sub(r"_\d", "_N", n, count=1) for n in INPUTS}  # controlnet_N_image
    missing = [n for n in INPUTS if n not in names and slot_form[n] not in names]
    assert missing == []


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {anchor(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_between_pages_land(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # another site
        file, _, fragment = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(target)
        elif fragment and (path.suffix != ".md" or fragment not in headings(path)):
            broken.append(target)
    assert broken == []


def test_the_readme_curl_runs_through_cogs_server(sd_server):
    """Try it's curl: its body as written, sent to Cog's server, gives what its comment says."""
    readme = (ROOT / "README.md").read_text()
    command = readme[readme.index("curl -s http://localhost:5000/predictions") :]
    body = json.loads(command[command.index("-d '") + 4 : command.index("'\n")])
    body["input"] |= {"num_inference_steps": 2, "width": 128, "height": 128}  # tiny weights
    response = sd_server.post(body["input"])
    assert response.status_code == 200 and response.json()["status"] == "succeeded"
    assert response.json()["output"][0].startswith("data:image/png;base64,")
    assert "output 0: seed 1" in response.json()["logs"]


def test_script_tasks_usage_names_every_dialect():
    usage = (ROOT / "script/task").read_text().split("--dialect ", 1)[1].split(" ", 1)[0]
    assert usage.split("|") == sorted(DIALECTS)


def test_the_two_ways_an_input_is_refused_are_as_the_inputs_page_says(sd_server):
    small = {"prompt": "x", "num_inference_steps": 2, "height": 128}
    schema = sd_server.post(small | {"width": 4000})
    assert schema.status_code == 422
    assert schema.json()["detail"][0]["loc"] == ["body", "input", "width"]
    rule = sd_server.post(small | {"width": 1001})
    assert rule.status_code == 200 and rule.json()["status"] == "failed"
    assert rule.json()["error"].startswith("Prediction failed: Async prediction failed: ValueError")
    assert error_message(rule.json()["error"]).startswith("width: 1001 is not a multiple of 8")
