"""Caption ranking: choose one caption per image among its candidates.

Backends implement :class:`CaptionRanker`. The offline default, :class:`ConsensusRanker`, needs no
model: it scores each caption by its mean cosine similarity to the image's other captions over
bags of content words (the consensus re-ranking of Devlin et al., 2015, "Exploring Nearest
Neighbor Approaches for Image Captioning"). The caption that agrees most with what the other
annotators wrote mentions the image's salient objects and leaves out idiosyncratic detail.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Protocol, Sequence

from PIL import Image

from tokencompose.schemas.sample import BackendInfo
from tokencompose.tasks.nouns.extraction import lookup_text
from tokencompose.schemas.records import Caption

_WORD = re.compile(r"[a-z0-9]+")
_FUNCTION_WORDS = frozenset(
    "a an the and or of in on at to with for from by is are was were be been being it its this that "
    "these those there their his her he she they them some two three one while as into onto near next "
    "up down over under out has have having very".split()
)


class CaptionRanker(Protocol):
    """Scores every candidate caption of an image; higher is better."""

    def info(self) -> BackendInfo: ...

    def score(self, images: Sequence[Image.Image], captions: Sequence[Sequence[str]]) -> list[list[float]]:
        """For each image, one score per caption, in the order given (a batch of images at once)."""
        ...


def content_words(text: str) -> Counter[str]:
    return Counter(w for w in _WORD.findall(lookup_text(text).lower()) if w not in _FUNCTION_WORDS)


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    dot = sum(count * b[word] for word, count in a.items())
    norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
    return dot / norm if norm else 0.0


class ConsensusRanker:
    """Mean cosine similarity of a caption's content words to each other caption of the same image."""

    def info(self) -> BackendInfo:
        from tokencompose import __version__

        return BackendInfo(name="consensus", version=__version__,
                           details={"method": "mean bag-of-words cosine to the other captions"})

    def score(self, images: Sequence[Image.Image], captions: Sequence[Sequence[str]]) -> list[list[float]]:
        return [self._score_one(texts) for texts in captions]

    @staticmethod
    def _score_one(texts: Sequence[str]) -> list[float]:
        bags = [content_words(t) for t in texts]
        if len(bags) == 1:
            return [1.0]
        return [round(sum(_cosine(bag, other) for j, other in enumerate(bags) if j != i) / (len(bags) - 1), 6)
                for i, bag in enumerate(bags)]


def usable_captions(captions: Sequence[Caption], max_chars: int) -> tuple[list[Caption], list[tuple[Caption, str]]]:
    """Split candidates into those that can be ranked and those excluded, with the reason
    (a source value that is not text, empty or only invisible characters, too long)."""
    kept: list[Caption] = []
    excluded: list[tuple[Caption, str]] = []
    for caption in captions:
        text = caption.text.strip()
        if caption.problem:
            excluded.append((caption, caption.problem))
        elif not lookup_text(text).strip():
            excluded.append((caption, "empty"))
        elif len(text) > max_chars:
            excluded.append((caption, f"longer than {max_chars} characters"))
        else:
            kept.append(Caption(caption.id, text))
    return kept, excluded


def choose(scores: Sequence[float]) -> int:
    """Index of the best score; ties go to the earliest caption, so the choice is deterministic."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))
