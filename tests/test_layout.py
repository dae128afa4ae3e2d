"""The house in three wings, read from the code: the runtime (predict.py and sdcog/) imports
nothing from the other APIs (sdcog/dialects/) or the tools (sdcog/tools/), the other APIs nothing
from the tools; only sdcog/settings.py reads the environment in the runtime, and no code writes
it; the README's layout lists every module of each wing, and nothing else."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WINGS = {"runtime": "sdcog", "dialects": "sdcog/dialects", "tools": "sdcog/tools"}
FORBIDDEN = {"runtime": {"dialects", "tools"}, "dialects": {"tools"}, "tools": set()}
CODE = [ROOT / "predict.py", *sorted((ROOT / "sdcog").rglob("*.py"))]


def wing(path: Path) -> str:
    relative = path.relative_to(ROOT).parent.as_posix()
    return {folder: name for name, folder in WINGS.items()}.get(relative, "runtime")


def module_wing(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "sdcog":
        return None
    return {"dialects": "dialects", "tools": "tools"}.get(
        parts[1] if len(parts) > 1 else "", "runtime"
    )


def imports(path: Path) -> set[str]:
    """Every sdcog module the file imports, relative imports resolved."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("path", CODE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_arrow_from_the_runtime_to_the_other_wings_or_from_the_dialects_to_the_tools(path):
    own = wing(path)
    crossing = sorted(m for m in imports(path) if module_wing(m) in FORBIDDEN[own])
    assert not crossing, f"{own} imports {crossing}"


def _environment_uses(tree: ast.AST) -> tuple[list[int], list[int]]:
    """Lines that read os.environ / os.getenv, and lines that write the environment."""
    reads, writes = [], []
    for node in ast.walk(tree):
        is_environ = (
            isinstance(node, ast.Attribute) and node.attr == "environ"
            and isinstance(node.value, ast.Name) and node.value.id == "os"
        )  # fmt: skip
        if is_environ or (isinstance(node, ast.Attribute) and node.attr == "getenv"):
            reads.append(node.lineno)
        if isinstance(node, ast.Attribute) and node.attr in ("putenv", "unsetenv"):
            writes.append(node.lineno)
        targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else []
        for target in targets:
            if isinstance(target, ast.Subscript) and ast.unparse(target.value) == "os.environ":
                writes.append(node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            if owner == "os.environ" and node.func.attr in ("update", "setdefault", "pop",
                                                             "clear", "popitem"):  # fmt: skip
                writes.append(node.lineno)
    return reads, writes


# The one write allowed, and not a setting: onnxruntime's telemetry switched off before
# onnxruntime is imported, which nothing may switch on again.
LIBRARY_SWITCHES = {ROOT / "sdcog/pose.py": 'os.environ["ORT_DISABLE_TELEMETRY"] = "1"'}


@pytest.mark.parametrize("path", CODE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_settings_are_read_once_and_the_environment_never_written(path):
    lines = path.read_text().splitlines()
    switch = [n + 1 for n, line in enumerate(lines) if line == LIBRARY_SWITCHES.get(path)]
    reads, writes = _environment_uses(ast.parse(path.read_text()))
    reads, writes = [n for n in reads if n not in switch], [n for n in writes if n not in switch]
    assert not writes, f"writes the environment at lines {writes}"
    if wing(path) == "runtime" and path.name != "settings.py":
        assert not reads, f"reads the environment at lines {reads}: make it a setting"


def test_the_readme_layout_lists_every_module_of_each_wing():
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    sections = dict(
        re.findall(r"^### .*?`(sdcog/[\w/]*)`.*?\n(.*?)(?=^### |\Z)", layout, re.M | re.S)
    )
    assert set(sections) == {f"{folder}/" for folder in WINGS.values()}
    for folder in WINGS.values():
        heads = re.findall(r"^- (.*?): ", sections[f"{folder}/"], re.M)  # what each item lists
        listed = [name for head in heads for name in re.findall(r"`([\w.]+\.(?:py|json))`", head)]
        present = [p.name for p in sorted((ROOT / folder).iterdir())
                   if p.suffix in (".py", ".json") and p.name != "__init__.py"]  # fmt: skip
        assert sorted(listed) == sorted(set(listed)), f"{folder}: listed twice"
        assert sorted(listed) == present, folder
