"""CLIP's own tokenizer for the random weights (tiny and full-size): its BPE merges
(clip_merges.txt.gz, MIT, see clip_merges.LICENSE) written as the four files of SD 1.5's
tokenizer folder, so prompts count the tokens they count with the real weights."""

import gzip
import json
from pathlib import Path

HERE = Path(__file__).parent
# CLIP's vocabulary (write_tokenizer) and the ids of its start and end tokens.
VOCAB_SIZE = 49408
TOKEN_IDS = {"vocab_size": VOCAB_SIZE, "bos_token_id": 49406, "eos_token_id": 49407,
             "pad_token_id": 49407}  # fmt: skip


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable unicode table (bytes_to_unicode), in CLIP's
    vocabulary order: the printable bytes as themselves, then the others as chr(256 + n)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += [*range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def write_tokenizer(directory: Path) -> None:
    """CLIP's own BPE tokenizer (its 48,894 merges, clip_merges.txt.gz; 49,408 tokens, words as
    single tokens), written as the four files of SD 1.5's tokenizer folder: prompts count the
    tokens they count with the real weights."""
    directory.mkdir(parents=True, exist_ok=True)
    merges = gzip.decompress((HERE / "clip_merges.txt.gz").read_bytes()).decode().splitlines()
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB_SIZE
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (directory / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        **special,
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
