"""The house, read from the code and held to docs/architecture.md.

Three wings: the runtime (predict.py and sdcog/ but for its two other folders) imports nothing
from the other APIs (sdcog/dialects/) or the tools (sdcog/tools/), the other APIs nothing from
the tools. Inside the runtime, each folder imports only its own modules and those of the
folders before it in the architecture's Layout (its layers); no module imports back. Only
sdcog/serving/settings.py reads the environment in the runtime, and no code writes it. The
Layout lists every module of every folder, and nothing else."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs/architecture.md"
OTHER_WINGS = {"dialects": "sdcog/dialects", "tools": "sdcog/tools"}
FORBIDDEN = {"runtime": {"dialects", "tools"}, "dialects": {"tools"}, "tools": set()}
CODE = [ROOT / "predict.py", *sorted((ROOT / "sdcog").rglob("*.py"))]


def layout() -> dict[str, str]:
    """Folder (as `sdcog/x/`) -> its part of the Layout, in the page's order."""
    text = ARCHITECTURE.read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^### `(sdcog/[\w/]*)`\n(.*?)(?=^### |\Z)", text, re.M | re.S))


PACKAGES = {p.parent.relative_to(ROOT).as_posix() for p in CODE if p.name == "__init__.py"}


def folder_of(module: str) -> str:
    """`sdcog.request.request` -> `sdcog/request/`; `sdcog.request` (its __init__.py) and
    `sdcog.generate` -> their folders."""
    path = module.replace(".", "/")
    return (path if path in PACKAGES else path.rsplit("/", 1)[0]) + "/"


def wing(path: Path) -> str:
    relative = path.relative_to(ROOT).parent.as_posix()
    return next((name for name, folder in OTHER_WINGS.items() if relative == folder), "runtime")


def module_wing(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "sdcog":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in OTHER_WINGS else "runtime"


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
LIBRARY_SWITCHES = {ROOT / "sdcog/adapters/pose.py": 'os.environ["ORT_DISABLE_TELEMETRY"] = "1"'}


@pytest.mark.parametrize("path", CODE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_settings_are_read_once_and_the_environment_never_written(path):
    lines = path.read_text().splitlines()
    switch = [n + 1 for n, line in enumerate(lines) if line == LIBRARY_SWITCHES.get(path)]
    reads, writes = _environment_uses(ast.parse(path.read_text()))
    reads, writes = [n for n in reads if n not in switch], [n for n in writes if n not in switch]
    assert not writes, f"writes the environment at lines {writes}"
    if wing(path) == "runtime" and path != ROOT / "sdcog/serving/settings.py":
        assert not reads, f"reads the environment at lines {reads}: make it a setting"


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def graph() -> dict[str, set[str]]:
    """Each sdcog module -> the sdcog modules it imports (function-level imports too)."""
    modules = {module_name(p) for p in CODE if p.name != "predict.py"}
    edges = {}
    for path in CODE[1:]:
        found = {m for m in imports(path) if m in modules}
        edges[module_name(path)] = found - {module_name(path)}
    return edges


def test_the_runtime_imports_only_its_own_folder_and_the_layers_before_it():
    others = {f"{folder}/" for folder in OTHER_WINGS.values()}
    layers = [folder for folder in layout() if folder not in others]
    assert layers[-1] == "sdcog/", "the top of sdcog/ is the last layer"
    rank = {folder: n for n, folder in enumerate(layers)}
    wrong = []
    for module, targets in graph().items():
        if module_wing(module) != "runtime" or folder_of(module) == "sdcog/":
            continue
        for target in targets:
            later = rank[folder_of(target)] > rank[folder_of(module)]
            if module_wing(target) == "runtime" and later:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_the_architecture_lists_every_module_of_every_folder():
    sections = layout()
    folders = sorted({p.parent for p in (ROOT / "sdcog").rglob("*.py")})
    assert sorted(sections) == sorted(f"{f.relative_to(ROOT).as_posix()}/" for f in folders)
    for folder, text in sections.items():
        heads = re.findall(r"^- (.*?): ", text, re.M)  # what each item lists
        listed = [name for head in heads for name in re.findall(r"`([\w.]+\.(?:py|json))`", head)]
        present = [p.name for p in sorted((ROOT / folder).iterdir())
                   if p.suffix in (".py", ".json") and p.name != "__init__.py"]  # fmt: skip
        assert sorted(listed) == sorted(set(listed)), f"{folder}: listed twice"
        assert sorted(listed) == present, folder
