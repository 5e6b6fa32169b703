"""Which noun a detected box belongs to, decided by token positions in the detector's prompt.

GroundingDINO scores every box against every token of its text prompt. The prompt lists the
nouns as ``"noun1 . noun2 . noun3 ."``; each noun owns the tokens whose characters fall inside
its own stretch of the prompt. A box belongs to the noun owning the prompt tokens on which its
score exceeds the text threshold: when tokens of several nouns do, the noun with the highest
single token score wins (ties: the earlier noun). Position decides, never text, so "man" cannot
take the box of "woman", "dog" cannot take the box of "hot dog", and a word that occurs in two
nouns is told apart by where it occurs. A box whose above-threshold tokens are only separators
("."), [CLS] or [SEP] belongs to no noun and is dropped.

Everything here is pure (numpy in, numpy out), so it is tested on crafted scores.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

SEPARATOR = " . "
_SPECIAL = re.compile(r"[.?]")


def prompt_noun(text: str) -> str:
    """A noun as it goes into the prompt: lower case, single spaces, no '.' or '?' (the detector
    treats those as separators between nouns)."""
    return " ".join(_SPECIAL.sub(" ", text.lower()).split())


@dataclass(frozen=True)
class Prompt:
    """The detector prompt for one image.

    ``nouns`` are the distinct prompt nouns in order; ``spans`` their [start, end) character
    ranges in ``text``; ``noun_index[i]`` is the prompt noun of the caller's i-th noun (several
    caller nouns with the same lower-cased text share one prompt noun), or -1 for a noun that
    is empty once cleaned.
    """

    text: str
    nouns: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]
    noun_index: tuple[int, ...]


def build_prompt(nouns: Sequence[str]) -> Prompt:
    """The paper's prompt form: "noun1 . noun2 . noun3 ." in lower case."""
    distinct: dict[str, int] = {}
    index: list[int] = []
    for noun in nouns:
        cleaned = prompt_noun(noun)
        if not cleaned:
            index.append(-1)
            continue
        index.append(distinct.setdefault(cleaned, len(distinct)))
    parts, spans, cursor = [], [], 0
    for noun in distinct:
        spans.append((cursor, cursor + len(noun)))
        parts.append(noun)
        cursor += len(noun) + len(SEPARATOR)
    text = SEPARATOR.join(parts) + " ." if parts else ""
    return Prompt(text=text, nouns=tuple(distinct), spans=tuple(spans), noun_index=tuple(index))


def token_owners(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """For each token (its [start, end) character offsets from the tokenizer, (0, 0) for special
    tokens), the index of the noun whose span holds it, or -1."""
    owners = np.full(len(offsets), -1, dtype=np.int64)
    for t, (start, end) in enumerate(offsets):
        if end <= start:
            continue
        for n, (noun_start, noun_end) in enumerate(spans):
            if noun_start <= start and end <= noun_end:
                owners[t] = n
                break
    return owners


def assign_boxes(scores: np.ndarray, owners: np.ndarray, text_threshold: float) -> np.ndarray:
    """The noun of each box (-1: none).

    ``scores``: (boxes, tokens) probabilities (sigmoid of the detector's logits) over the prompt's
    tokens, in tokenizer positions; ``owners``: the noun of each token position (see
    :func:`token_owners`); positions past ``len(owners)`` (the detector's padding) own nothing.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (boxes, tokens), got shape {scores.shape}")
    boxes = scores.shape[0]
    length = min(scores.shape[1], len(owners))
    if boxes == 0 or length == 0 or owners.max(initial=-1) < 0:
        return np.full(boxes, -1, dtype=np.int64)
    owned = scores[:, :length]
    noun_ids = owners[:length]
    n_nouns = int(noun_ids.max()) + 1
    best = np.full((boxes, n_nouns), -np.inf)
    for noun in range(n_nouns):
        columns = noun_ids == noun
        if columns.any():
            best[:, noun] = owned[:, columns].max(axis=1)
    best[best <= text_threshold] = -np.inf
    chosen = best.argmax(axis=1)  # first maximum: ties go to the earlier noun
    chosen[~np.isfinite(best.max(axis=1))] = -1
    return chosen.astype(np.int64)


def select_boxes(scores: np.ndarray, box_threshold: float) -> np.ndarray:
    """Indices of the boxes kept: those whose best token score exceeds the box threshold."""
    scores = np.asarray(scores)
    if scores.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.nonzero(scores.max(axis=1) > box_threshold)[0]
