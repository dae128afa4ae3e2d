"""What one request may ask of the server. Each bound is checked before the work it bounds
starts (counts and lengths before any download or tokenising, image sizes before any pixel is
decoded, file headers before anything is read as weights), and a refusal names the input.

Without them, work grows faster than the request: loading LoRAs grows with the square of their
number (100 LoRAs took 196 s, 200 took 807 s), an embedding file of 5,000 rows took 16 minutes,
a 10 MB prompt took 25 s to tokenise before its length was refused, and a 522 KB PNG of
13,376 x 13,376 pixels decoded to 2 GB.
"""

# Characters in prompt or negative_prompt, also after a Replicate fine-tune's placeholder is
# replaced (predict.py's Input(max_length=...) says the same; a test keeps them equal). Far
# above the 600 tokens a prompt may encode to, far below what costs anything to tokenise.
MAX_PROMPT_CHARS = 20_000
MAX_LORAS = 8  # entries of lora_weights (a Replicate fine-tune's LoRA comes on top)
MAX_INVERSIONS = 16  # entries of textual_inversions
# Vectors of one embedding file (one 77-token chunk holds 75), and of a whole request.
MAX_EMBEDDING_ROWS = 75
MAX_REQUEST_EMBEDDING_ROWS = 300

# Output sides, given or derived (predict.py's width and height say the same; a model whose
# native size is outside them is refused).
MIN_SIDE = 128
MAX_SIDE = 2048

# Image inputs: decoded pixels (a 48-megapixel phone photo fits) and the long side over the
# short one (outputs go from 128x2048 to 2048x128: 16).
MAX_INPUT_PIXELS = 50_000_000
MAX_ASPECT = 16

# A safetensors header: far above any real LoRA's (kohya's with training metadata: < 2 MB).
MAX_HEADER_BYTES = 16 << 20
# A Replicate fine-tune's .tar: members and their sizes, read from the tar headers first.
MAX_TAR_MEMBERS = 64
MAX_TAR_MEMBER_BYTES = {
    "lora.safetensors": 1 << 30,
    "embeddings.pti": 16 << 20,
    "special_params.json": 64 << 10,
}
