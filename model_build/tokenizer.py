"""An offline CLIP-style BPE tokenizer, learned from our own prompts.

It has the shape of CLIP's tokenizer (NFC + lower-case, CLIP's pre-tokenisation regex,
byte-level alphabet, ``</w>`` end-of-word suffix, ``<|startoftext|>`` and
``<|endoftext|>``), so ``transformers.CLIPTokenizer`` loads it and openvino-tokenizers
converts it as it converts CLIP's own. The merges are learned here rather than by
``tokenizers``' trainer, whose order among equally frequent pairs changes from one
process to the next: ties go to the lexicographically smallest pair, so the same
corpus always gives the same files, byte for byte.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77
SUFFIX = "</w>"


def _pre_tokenizer() -> Any:
    """CLIPTokenizer's own normalizer and pre-tokenizer (so training splits words as it does)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab={BOS: 0, EOS: 1}, merges=[]).backend_tokenizer


def word_counts(corpus: Iterable[str]) -> Counter[tuple[str, ...]]:
    backend = _pre_tokenizer()
    counts: Counter[tuple[str, ...]] = Counter()
    for text in corpus:
        normalized = backend.normalizer.normalize_str(text)
        for word, _span in backend.pre_tokenizer.pre_tokenize_str(normalized):
            if word:
                counts[(*word[:-1], word[-1] + SUFFIX)] += 1
    return counts


def learn_merges(
    words: Counter[tuple[str, ...]], max_merges: int, min_count: int = 2
) -> list[tuple[str, str]]:
    """Classic BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair)."""
    symbols = [list(word) for word in words]
    freqs = list(words.values())
    pairs: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for i, word in enumerate(symbols):
        for pair in itertools.pairwise(word):
            pairs[pair] += freqs[i]
            where[pair].add(i)
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges and pairs:
        best, count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if count < min_count:
            break
        merges.append(best)
        merged = best[0] + best[1]
        for i in sorted(where.pop(best, ())):
            word, freq = symbols[i], freqs[i]
            for pair in itertools.pairwise(word):
                pairs[pair] -= freq
                if pairs[pair] <= 0:
                    del pairs[pair]
            out: list[str] = []
            j = 0
            while j < len(word):
                if j + 1 < len(word) and (word[j], word[j + 1]) == best:
                    out.append(merged)
                    j += 2
                else:
                    out.append(word[j])
                    j += 1
            symbols[i] = out
            for pair in itertools.pairwise(out):
                pairs[pair] += freq
                where[pair].add(i)
        pairs.pop(best, None)
    return merges


def train_clip_bpe(
    corpus: Iterable[str], out_dir: Path, vocab_size: int = 4096, max_length: int = MAX_LENGTH
) -> Path:
    """Learn the BPE on ``corpus`` and save a CLIPTokenizer folder at ``out_dir``.

    ``max_length`` is the tokenizer's ``model_max_length``: what diffusers and openvino.genai
    pad every prompt to (it must equal the text encoder's ``max_position_embeddings``).
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    base = len(alphabet) * 2 + 2
    merges = learn_merges(word_counts(corpus), max_merges=max(0, vocab_size - base))
    # CLIP's vocabulary order: every byte symbol, every byte symbol ending a word, the
    # merged symbols in merge order, then the two special tokens.
    vocab: dict[str, int] = {}
    for symbol in [
        *alphabet,
        *(s + SUFFIX for s in alphabet),
        *(a + b for a, b in merges),
        BOS,
        EOS,
    ]:
        vocab.setdefault(symbol, len(vocab))
    merge_list: Any = merges
    clip = CLIPTokenizer(vocab=vocab, merges=merge_list, model_max_length=max_length)
    clip.save_pretrained(str(out_dir))
    return Path(out_dir)
