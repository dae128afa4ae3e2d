"""Prompt encoding in-process on tiny weights, against diffusers' own encoder where it applies."""

import pytest
import torch
from compel import Compel
from helpers import logged
from hypothesis import given, settings
from hypothesis import strategies as st

from sdcog.denoise.prompts import (
    MAX_CHUNKS,
    SYNTAX,
    _conjunction,
    _plain,
    check_length,
    clean,
    encode,
)
from sdcog.models.pipelines import Pipelines


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def loaded(request, make_weights):
    pipelines = Pipelines.load(make_weights(request.param))
    return pipelines.base["txt2img"], pipelines.family


def diffusers_embeds(pipe, family, prompt, negative="", clip_skip=None):
    if family.pipeline == "sdxl":
        out = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                 do_classifier_free_guidance=True, negative_prompt=negative,
                                 clip_skip=clip_skip)  # fmt: skip
        return dict(zip(["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                         "negative_pooled_prompt_embeds"], out, strict=True))  # fmt: skip
    out = pipe.encode_prompt(prompt, "cpu", 1, True, negative)
    return {"prompt_embeds": out[0], "negative_prompt_embeds": out[1]}


def test_none_matches_diffusers_own_encoding(loaded):
    pipe, family = loaded
    for prompt in ("a red cube", "a cat+++ (dog)1.5"):
        ours = encode(pipe, family, prompt, "blurry", "none", 0).base
        for name, tensor in diffusers_embeds(pipe, family, prompt, "blurry").items():
            assert torch.equal(ours[name], tensor), name


def test_without_syntax_both_weightings_agree(loaded):
    pipe, family = loaded
    compel = encode(pipe, family, "a lighthouse at dusk", "fog", "compel", 0).base
    none = encode(pipe, family, "a lighthouse at dusk", "fog", "none", 0).base
    for name in compel:
        torch.testing.assert_close(compel[name], none[name])


def test_weighting_syntax_changes_compel_only(loaded):
    pipe, family = loaded
    plain = encode(pipe, family, "a cat", "", "compel", 0).base["prompt_embeds"]
    weighted = encode(pipe, family, "a cat+++", "", "compel", 0).base["prompt_embeds"]
    literal = encode(pipe, family, "a cat+++", "", "none", 0).base["prompt_embeds"]
    assert not torch.allclose(plain, weighted)
    assert not torch.allclose(weighted, literal)
    # compel's blend and conjunction parse too
    for prompt in ('("a cat", "a dog").blend(0.5, 0.5)', '("a cat", "a dog").and()'):
        assert encode(pipe, family, prompt, "", "compel", 0).base["prompt_embeds"].shape[0] == 1


@pytest.mark.parametrize("weighting", ["compel", "none"])
def test_long_prompts_are_chunked_not_cut(loaded, weighting):
    pipe, family = loaded
    prompt = " ".join(["cat"] * 300)  # one token a word, as CLIP's tokenizer counts
    embeds = encode(pipe, family, prompt, "short", weighting, 0).base
    assert embeds["prompt_embeds"].shape[1] == 77 * 4  # 300 tokens in chunks of 75
    assert embeds["negative_prompt_embeds"].shape == embeds["prompt_embeds"].shape
    changed_tail = prompt.removesuffix("cat") + "dog"
    other = encode(pipe, family, changed_tail, "short", weighting, 0).base["prompt_embeds"]
    assert not torch.equal(other[:, -77:], embeds["prompt_embeds"][:, -77:])  # the tail counts


@pytest.mark.parametrize("weighting", ["compel", "none"])
def test_long_prompts_are_not_reported_as_indexing_errors(make_weights, weighting):
    """transformers warns (once per tokenizer) that a text over 77 tokens "will result in
    indexing errors": not so here, where every weighting chunks it."""
    pipelines = Pipelines.load(make_weights("sd"))  # a tokenizer that has not warned
    pipe = pipelines.base["txt2img"]
    with logged("transformers.tokenization_utils_base") as messages:
        check_length(pipe, "cat " * 300, "prompt")
        encode(pipe, pipelines.family, "cat " * 300, "", weighting, 0)
    assert not [m for m in messages if "indexing errors" in m]


def encoder_calls(pipe, encode_them) -> dict[str, int]:
    calls = {}

    def count(name):
        return lambda *_: calls.update({name: calls.get(name, 0) + 1})

    names = [n for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None]
    hooks = [getattr(pipe, n).register_forward_hook(count(n)) for n in names]
    try:
        encode_them()
    finally:
        for hook in hooks:
            hook.remove()
    return calls


@pytest.mark.parametrize("prompt", ["a lighthouse at dusk", "a (lighthouse)1.3 at dusk"])
def test_each_text_runs_each_encoder_once_as_in_diffusers(loaded, prompt):
    # SDXL's pooled embedding comes from the same pass, and no empty-prompt pass pads
    # embeddings that already have one length.
    pipe, family = loaded
    ours = encoder_calls(pipe, lambda: encode(pipe, family, prompt, "fog", "compel", 0))
    theirs = encoder_calls(pipe, lambda: diffusers_embeds(pipe, family, prompt, "fog"))
    weighted = "(" in prompt  # compel adds one empty-prompt pass per encoder to weight from
    assert ours == {name: count + weighted for name, count in theirs.items()}


def test_pooled_embedding_is_of_the_text_without_its_weighting_syntax(loaded):
    pipe, family = loaded
    if family.pipeline != "sdxl":
        pytest.skip("SD 1.x has no pooled embedding")
    weighted = encode(pipe, family, "a (red)1.3 cube+", "", "compel", 0).base
    plain = encode(pipe, family, "a red cube", "", "compel", 0).base
    assert torch.equal(weighted["pooled_prompt_embeds"], plain["pooled_prompt_embeds"])
    assert not torch.equal(weighted["prompt_embeds"], plain["prompt_embeds"])


def test_too_long_is_a_clear_error(loaded):
    pipe, family = loaded
    with pytest.raises(ValueError, match=rf"negative_prompt: 700 tokens .* {MAX_CHUNKS * 75}"):
        encode(pipe, family, "ok", "cat " * 700, "compel", 0)


@pytest.mark.parametrize("clip_skip", [1, 2, 3, 4])
def test_clip_skip_means_what_diffusers_means(loaded, clip_skip):
    pipe, family = loaded
    ours = encode(pipe, family, "a cat", "", "none", clip_skip).base["prompt_embeds"]
    ids = pipe.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt")
    if family.pipeline == "sdxl":  # diffusers' SDXL path: layer -(clip_skip + 2) of both encoders
        expected = diffusers_embeds(pipe, family, "a cat", clip_skip=clip_skip)["prompt_embeds"]
    else:  # layer -(clip_skip + 1) through the final layer norm
        states = pipe.text_encoder(ids.input_ids, output_hidden_states=True).hidden_states
        expected = pipe.text_encoder.final_layer_norm(states[-(clip_skip + 1)])
    assert torch.equal(ours, expected)
    assert not torch.equal(ours, encode(pipe, family, "a cat", "", "none", 0).base["prompt_embeds"])


def test_control_characters_are_spaces():
    assert clean("a\x0bb\x0cc\r\nd\te\x00f\u2028g\x85h") == "a b c  d e f g h"


@pytest.mark.parametrize("weighting", ["compel", "none"])
def test_control_whitespace_encodes_as_a_space(loaded, weighting):
    pipe, family = loaded
    plain = encode(pipe, family, "a cat on a mat", "", weighting, 0).base
    odd = encode(pipe, family, "a cat\x0bon\x0ca mat", "", weighting, 0).base
    for name in plain:
        assert torch.equal(odd[name], plain[name]), name


@pytest.mark.parametrize("text", ['("a", "b").blend(0.5)', "()"])
def test_what_compel_cannot_parse_is_encoded_as_written_and_logged(loaded, text, capsys):
    pipe, family = loaded
    compel = encode(pipe, family, "x", text, "compel", 0).base
    literal = encode(pipe, family, "x", text, "none", 0).base
    for name in compel:
        assert torch.equal(compel[name], literal[name]), name
    assert "negative_prompt: weighting syntax" in capsys.readouterr().out


def test_empty_negative_prompt_follows_the_models_config(loaded):
    # SDXL base ships force_zeros_for_empty_prompt: true; diffusers' pipe(prompt) then
    # conditions on zeros (negative_prompt=None). SD 1.x encodes "".
    pipe, family = loaded
    expected = diffusers_embeds(
        pipe, family, "a red cube", None if family.pipeline == "sdxl" else ""
    )
    for weighting in ("compel", "none"):
        ours = encode(pipe, family, "a red cube", "", weighting, 0)
        for name, tensor in expected.items():
            torch.testing.assert_close(ours.base[name], tensor, msg=name)
        if family.pipeline == "sdxl":
            assert not ours.base["negative_prompt_embeds"].any()
            # The refiner ships force_zeros_for_empty_prompt: false.
            assert ours.refiner["negative_pooled_prompt_embeds"].any()
            zeroed = encode(pipe, family, "a red cube", "", weighting, 0, refiner_zeros=True)
            assert not zeroed.refiner["negative_pooled_prompt_embeds"].any()
    assert (
        encode(pipe, family, "a red cube", "fog", "compel", 0).base["negative_prompt_embeds"].any()
    )


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_characters=sorted(SYNTAX),
                             blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
               max_size=60))  # fmt: skip
def test_text_that_skips_the_parser_means_the_same(text):
    text = clean(text)  # as encode() hands prompts on
    try:
        parsed = Compel.parse_prompt_string(text)
    except Exception:
        parsed = None
    fast = _conjunction(text, "compel", "prompt")
    if parsed is not None and (parsed.prompts or not text.strip()):
        assert repr(fast) == repr(parsed)
    else:  # what the parser cannot read is encoded as written either way
        assert repr(fast) == repr(_conjunction(text, "none", "prompt"))


WORD = st.text(st.characters(blacklist_characters=sorted(SYNTAX | {" ", ","}),
                             blacklist_categories=("Cc", "Cs", "Z")), min_size=1)  # fmt: skip


@pytest.mark.slow  # about 10 s or more: the fast tier leaves it to script/test --all
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(WORD, st.sampled_from([" ", ", "])), min_size=1, max_size=12))
def test_prompt_like_text_skips_the_parser_and_means_the_same(words):
    text = "".join(w + sep for w, sep in words)[: -len(words[-1][1])]
    assert _plain(text)
    test_text_that_skips_the_parser_means_the_same.hypothesis.inner_test(text)
