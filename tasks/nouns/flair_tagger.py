"""flair part-of-speech tagging, as the paper ("flair/pos-english", Penn Treebank tags).

The tagger is loaded from a local file (the models folder, the Hugging Face cache or a path in
``nouns.flair_model``), never from the hub. Captions are tagged in mini-batches; every token
comes back with its character offsets in the caption, so the shared
:func:`tokencompose.tasks.nouns.extraction.merge_noun_phrases` gives the same phrases contract as spaCy.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

from tokencompose.tasks.models import devices

from tokencompose.tasks.models import weights
from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.sample import BackendInfo
from tokencompose.tasks.nouns.extraction import TaggedToken

_cache: dict[tuple, tuple] = {}
_cache_lock = threading.Lock()


def align_tokens(caption: str, tokens: Sequence[tuple[str, int, str]]) -> list[TaggedToken]:
    """Tokens (text, offset the tokenizer reported, tag) with offsets checked against the caption:
    a reported offset that does not point at the token's text is replaced by the token's next
    occurrence after the previous token (tokenizers may normalise whitespace)."""
    out: list[TaggedToken] = []
    cursor = 0
    for text, start, tag in tokens:
        if not (start >= cursor and caption[start:start + len(text)] == text):
            found = caption.find(text, cursor)
            if found < 0:
                continue  # a token the tokenizer rewrote (no such characters in the caption)
            start = found
        out.append(TaggedToken(text, start, start + len(text), tag))
        cursor = start + len(text)
    return out


class FlairTagger:
    """A :class:`tokencompose.tasks.nouns.extraction.NounTagger` over a flair SequenceTagger."""

    def __init__(self, model_file: Path, model_name: str = "flair/pos-english", batch_size: int = 64,
                 device: str = "auto"):
        import flair
        import torch
        from flair.models import SequenceTagger

        self.model_file = Path(model_file)
        self.model_name = model_name
        self.batch_size = batch_size
        self.device = devices.resolve_device(device)
        key = (str(self.model_file), self.device)
        with _cache_lock:
            if key not in _cache:
                # flair puts its tensors on the process-wide flair.device
                flair.device = torch.device(self.device)
                tagger = SequenceTagger.load(str(self.model_file))
                _cache[key] = (tagger.to(flair.device).eval(), threading.Lock())
        self.tagger, self.lock = _cache[key]

    @classmethod
    def from_config(cls, config: BuildConfig) -> "FlairTagger":
        n = config.nouns
        return cls(weights.locate(config, weights.flair_spec(n.flair_model)), n.flair_model, n.batch_size,
                   config.models.device)

    def info(self):
        import flair

        return BackendInfo(name="flair", version=f"flair {flair.__version__}",
                           details={"model": self.model_name, "weights": self.model_file.name,
                                    "label_type": self.tagger.label_type,
                                    "noun_tags": "NN NNS NNP NNPS, consecutive nouns merged"})

    def tag(self, captions: Sequence[str]) -> list[list[TaggedToken]]:
        from flair.data import Sentence

        sentences = [Sentence(caption) if caption.strip() else None for caption in captions]
        present = [s for s in sentences if s is not None and len(s) > 0]
        with self.lock:
            if present:
                self.tagger.predict(present, mini_batch_size=self.batch_size, label_name=self.tagger.label_type)
        label = self.tagger.label_type
        results: list[list[TaggedToken]] = []
        for caption, sentence in zip(captions, sentences):
            if sentence is None or len(sentence) == 0:
                results.append([])
                continue
            raw = [(t.text, t.start_position, t.get_label(label).value) for t in sentence]
            results.append(align_tokens(caption, raw))
            sentence.clear_embeddings()
        return results
