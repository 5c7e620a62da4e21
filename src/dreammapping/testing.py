"""Pieces for tiny random models that tests, dry runs and benchmarks build without any download."""

from __future__ import annotations

import json
from pathlib import Path

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def letter_tokenizer(folder: str | Path, max_length: int):
    """A CLIP BPE tokenizer over single letters, its vocab.json / merges.txt written to `folder`: real CLIP token ids
    are not needed to exercise or time a pipeline of random weights."""
    from transformers import CLIPTokenizer  # heavy; only the callers that build models pay for it

    folder = Path(folder)
    vocab: dict[str, int] = {}
    for tok in ["<|startoftext|>", "<|endoftext|>", *LETTERS, *(c + "</w>" for c in LETTERS), ",", ",</w>"]:
        vocab[tok] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
