"""A deterministic character-level tokenizer for the tiny built-in model.

Built in code (no training, no download) as a real `PreTrainedTokenizerFast`, so it saves and
loads with `save_pretrained`/`AutoTokenizer.from_pretrained` like any hub tokenizer. Every
printable ASCII character and the newline is one token; anything else maps to [UNK].
It is meant for the small synthetic tasks (Sudoku, Countdown) the tiny model learns on CPU,
not for natural-language tasks, which use the real model's own tokenizer.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, MASK, EOS, BOS, UNK = "[PAD]", "[MASK]", "[EOS]", "[BOS]", "[UNK]"
SPECIAL_TOKENS = (PAD, MASK, EOS, BOS, UNK)
CHARACTERS = "\n" + "".join(chr(c) for c in range(32, 127))


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny model's tokenizer: ids 0-4 are the special tokens, then one id per character."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Split every character off on its own; [\s\S] also matches the newline.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()  # characters are joined back without separators
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        mask_token=MASK,
        eos_token=EOS,
        bos_token=BOS,
        unk_token=UNK,
        padding_side="left",  # prompts are left-padded so responses line up at the end
    )
    return tok
