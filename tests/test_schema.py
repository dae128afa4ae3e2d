"""predict.py must stay readable by Cog's static parser, and the committed schema must match it."""

import ast
import json
from pathlib import Path

from sdcog.tools.schema import build_schema, render

ROOT = Path(__file__).resolve().parent.parent


def _literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except ValueError:
        return False


def _resolvable(node: ast.AST, constants: dict[str, ast.AST]) -> bool:
    """What Cog's tree-sitter parser resolves in an Input() argument."""
    if _literal(node):
        return True
    if isinstance(node, ast.Name):
        return node.id in constants and _literal(constants[node.id])
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _resolvable(node.left, constants) and _resolvable(node.right, constants)
    if (  # list(D.keys()) / list(D.values()) of a module-level literal dict
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "list"
        and len(node.args) == 1
        and isinstance(inner := node.args[0], ast.Call)
        and isinstance(inner.func, ast.Attribute)
        and inner.func.attr in ("keys", "values")
        and isinstance(inner.func.value, ast.Name)
    ):
        return isinstance(constants.get(inner.func.value.id), ast.Dict) and _literal(
            constants[inner.func.value.id]
        )
    return False


def unresolvable_inputs(source: str) -> list[str]:
    tree = ast.parse(source)
    constants = {
        target.id: stmt.value
        for stmt in tree.body
        if isinstance(stmt, ast.Assign)
        for target in stmt.targets
        if isinstance(target, ast.Name)
    }
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Input":
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                if not _resolvable(arg, constants):
                    problems.append(f"line {arg.lineno}: {ast.unparse(arg)}")
    return problems


def test_predict_py_is_statically_parseable():
    assert unresolvable_inputs((ROOT / "predict.py").read_text()) == []


def test_the_checker_catches_computed_arguments():
    source = (
        "N = 3\nSIZES = list(range(128, 2049, 64))\nD = {'a': 1}\n"
        "def predict(a=Input(choices=SIZES), b=Input(default=N), c=Input(choices=list(D.keys())),"
        " d=Input(le=2**N), e=Input(choices=[x for x in 'ab'])): ...\n"
    )
    assert [p.split(": ", 1)[1] for p in unresolvable_inputs(source)] == [
        "SIZES",
        "2 ** N",
        "[x for x in 'ab']",
    ]


def test_committed_schema_is_current():
    committed = (ROOT / ".cog/openapi_schema.json").read_text()
    assert committed == render(build_schema()), "stale: run script/schema"


def test_schema_has_the_public_inputs():
    schemas = json.loads((ROOT / ".cog/openapi_schema.json").read_text())["components"]["schemas"]
    inputs = schemas["Input"]
    assert inputs["required"] == ["prompt"]
    assert "seed" not in inputs.get("required", [])
    width = inputs["properties"]["width"]  # a multiple of 8: checked by sdcog.request.request
    assert (width["minimum"], width["maximum"]) == (128, 2048) and "enum" not in width
    assert len(schemas["scheduler"]["enum"]) == 18 + 13  # ours, then AUTOMATIC1111's names
    assert "Euler a" in schemas["scheduler"]["enum"]
    assert schemas["Output"].get("x-cog-array-type") == "iterator"  # previews, then the images
    assert inputs["properties"]["num_outputs"]["maximum"] == 10
    assert schemas["Output"]["items"]["format"] == "uri"


def test_concurrency_is_a_literal_and_matches_the_runner():
    # `cog build` reads @concurrent(max=...) statically and bakes COG_MAX_CONCURRENCY from it;
    # local servers set the variable from sdcog.serving.runner.SLOTS.
    from predict import Predictor
    from sdcog.serving.runner import SLOTS

    tree = ast.parse((ROOT / "predict.py").read_text())
    (decorator,) = [
        d
        for node in ast.walk(tree)
        if isinstance(node, ast.AsyncFunctionDef) and node.name == "predict"
        for d in node.decorator_list
    ]
    assert ast.unparse(decorator) == f"concurrent(max={SLOTS})"
    assert Predictor.predict.__cog_concurrent_max__ == SLOTS
