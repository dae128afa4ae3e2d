"""A1111 emphasis syntax: the parser against hand-computed weights, and the encoding against the
compel syntax that means the same, for both families."""

import pytest
import torch

from sdcog.denoise.a1111 import conjunction, fragments
from sdcog.denoise.prompts import encode
from sdcog.models.pipelines import Pipelines

UP, DOWN = 1.1, 1 / 1.1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("(masterpiece:1.2), a cat", [("masterpiece", 1.2), (", a cat", 1.0)]),
        ("(word)", [("word", UP)]),
        ("((word))", [("word", UP * UP)]),
        ("[word]", [("word", DOWN)]),
        ("[[word]]", [("word", DOWN * DOWN)]),
        ("((word:1.5))", [("word", 1.5 * UP)]),
        ("(a (b:0.5) c)", [("a ", UP), ("b", 0.5 * UP), (" c", UP)]),
        ("([a] b)", [("a", DOWN * UP), (" b", UP)]),
        ("(a : 0.8 )", [("a ", 0.8)]),
        ("(a:.5)", [("a", 0.5)]),
        (r"\(not weighted\) cat", [("(not weighted) cat", 1.0)]),
        (r"a \[b\] \\ c", [(r"a [b] \ c", 1.0)]),
        ("a) b] c", [("a) b] c", 1.0)]),  # nothing to close: literal
        ("a :1.5) b", [("a :1.5) b", 1.0)]),  # a weight with no round bracket: literal
        ("(a b", [("a b", UP)]),  # never closed: weights the rest
        ("x [y (z", [("x ", 1.0), ("y ", DOWN), ("z", DOWN * UP)]),
        ("ratio 16:9", [("ratio 16:9", 1.0)]),
        ("(a)(b)", [("ab", UP)]),  # equal neighbours merge
        ("", [("", 1.0)]),
        ("()", [("", 1.0)]),
    ],
)
def test_weights_are_what_a1111_computes(text, expected):
    got = fragments(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_break_starts_a_new_part():
    parts = conjunction("a (cat:1.3) BREAK on a [mat]").prompts
    assert [[(f.text, f.weight) for f in p.children] for p in parts] == [
        [("a ", 1.0), ("cat", 1.3)],
        [("on a ", 1.0), ("mat", pytest.approx(DOWN))],
    ]
    assert len(conjunction("BREAKFAST Break break").prompts) == 1  # only the capital word


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def loaded(request, make_weights):
    pipelines = Pipelines.load(make_weights(request.param))
    return pipelines.base["txt2img"], pipelines.family


@pytest.mark.parametrize(
    ("a1111", "compel"),
    [
        ("(masterpiece:1.2), a cat", "(masterpiece)1.2, a cat"),
        ("a ((red)) cube, [blurry]", f"a (red){UP * UP} cube, (blurry){DOWN}"),
        (r"a \(literal\) cube", r"a \(literal\) cube"),
        ("a cat BREAK a dog", '("a cat", "a dog").and()'),
    ],
)
def test_encodes_as_compel_encodes_the_same_weights(loaded, a1111, compel):
    pipe, family = loaded
    ours = encode(pipe, family, a1111, a1111, "a1111", 0).base
    expected = encode(pipe, family, compel, compel, "compel", 0).base
    for name in ours:
        torch.testing.assert_close(ours[name], expected[name], msg=name)
    if a1111 != compel:  # and the syntax did something
        literal = encode(pipe, family, a1111, a1111, "none", 0).base
        assert not torch.equal(ours["prompt_embeds"], literal["prompt_embeds"])
