"""An offline CLIP-style BPE tokenizer, trained with ``tokenizers`` on our own prompts.

It has the shape of CLIP's tokenizer (lower-cased, CLIP's pre-tokenisation regex,
byte-level alphabet, ``</w>`` end-of-word suffix, ``<|startoftext|>`` /
``<|endoftext|>``), so ``transformers.CLIPTokenizer`` loads it and
openvino-tokenizers converts it exactly as it converts CLIP's own. Training is
deterministic: the same corpus gives the same files, byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77
# CLIP's pre-tokenisation pattern (contractions, letter runs, single digits, symbol runs).
CLIP_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
    r"""[^\s\p{L}\p{N}]+"""
)


def train_clip_bpe(corpus: Iterable[str], out_dir: Path, vocab_size: int = 4096) -> Path:
    """Train the BPE on ``corpus`` and save a CLIPTokenizer folder at ``out_dir``."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(unk_token=EOS, end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)

    raw = Path(out_dir) / "_bpe"
    raw.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(raw))
    trained: dict[str, int] = json.loads((raw / "vocab.json").read_text(encoding="utf-8"))
    merges = (raw / "merges.txt").read_text(encoding="utf-8")

    # CLIP's vocabulary order: every byte symbol, every byte symbol ending a word,
    # the merged symbols in merge order, then the two special tokens.
    vocab: dict[str, int] = {}
    for symbol in alphabet:
        vocab.setdefault(symbol, len(vocab))
    for symbol in alphabet:
        vocab.setdefault(symbol + "</w>", len(vocab))
    for symbol, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        vocab.setdefault(symbol, len(vocab))
    for line in merges.splitlines()[1:]:
        if line.strip():
            vocab.setdefault(line.replace(" ", ""), len(vocab))
    vocab.setdefault(BOS, len(vocab))
    vocab.setdefault(EOS, len(vocab))

    # The tokenizers backend takes merges as (left, right) pairs.
    merge_list: Any = [tuple(line.split(" ")) for line in merges.splitlines()[1:] if line.strip()]
    clip = CLIPTokenizer(vocab=vocab, merges=merge_list, model_max_length=MAX_LENGTH)
    clip.save_pretrained(str(out_dir))
    for f in raw.iterdir():
        f.unlink()
    raw.rmdir()
    return Path(out_dir)
