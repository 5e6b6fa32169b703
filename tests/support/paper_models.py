"""Helpers for the paper-backend tests: a models folder of small, randomly initialised models built
with the real libraries (no weights can be downloaded here).

- ``bert-base-uncased/``: a tiny BertModel and a word-piece vocabulary written here;
- ``groundingdino_swint_ogc.pth``: GroundingDINO from its SwinT-OGC config with that text encoder,
  random weights, its decoder output norm scaled down so box scores spread instead of saturating;
- ``sam_hq_vit_tiny.pth``: SAM-HQ vit_tiny, random weights;
- ``flair/pos-english/pytorch_model.bin``: a small flair SequenceTagger (one-hot word
  embeddings) trained for a few seconds on a tiny tagged corpus written here;
- ``clip-vit-s-32.pt``: open_clip ViT-S-32, random weights.

Everything is built once per test process (``build_models_dir`` is cached).
"""
from __future__ import annotations

import functools
import os
import string
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CLIP_MODEL = "ViT-S-32"
CLIP_FILE = "clip-vit-s-32.pt"
DECODER_NORM_SCALE = 0.03

WORDS = """man woman dog hot cat cup coffee spoon table plate pizza bed bear teddy horse rocket astronaut flag
suit helmet shuttle camera photographer tripod motorcycle kitten whiskers eyes face saucer a an the of on in with
and next to two""".split()

# (sentence, Penn tags): small, but enough for the tagger to learn determiners, prepositions and nouns
CORPUS = [
    ("a man riding a horse .", "DT NN VBG DT NN ."),
    ("a woman holding a cup of coffee .", "DT NN VBG DT NN IN NN ."),
    ("two dogs playing with a frisbee .", "CD NNS VBG IN DT NN ."),
    ("a teddy bear on the bed .", "DT NN NN IN DT NN ."),
    ("a cat sitting on a table .", "DT NN VBG IN DT NN ."),
    ("an astronaut in a suit next to a flag .", "DT NN IN DT NN JJ TO DT NN ."),
    ("a cup and a spoon on a plate .", "DT NN CC DT NN IN DT NN ."),
    ("a photographer with a camera on a tripod .", "DT NN IN DT NN IN DT NN ."),
    ("a rocket on a launch pad .", "DT NN IN DT NN NN ."),
    ("a kitten with green eyes and long whiskers .", "DT NN IN JJ NNS CC JJ NNS ."),
    ("the man is standing near a motorcycle .", "DT NN VBZ VBG IN DT NN ."),
    ("a hot dog on a plate .", "DT JJ NN IN DT NN ."),
    ("a woman and a dog .", "DT NN CC DT NN ."),
    ("a pizza sitting on a table .", "DT NN VBG IN DT NN ."),
]


def write_tiny_bert(folder: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", ",", "'", "-"] + WORDS
    vocab += list(string.ascii_lowercase + string.digits) + ["##" + c for c in string.ascii_lowercase + string.digits]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(dict.fromkeys(vocab)), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)
    return folder


def write_dino(path: Path, text_encoder: Path) -> Path:
    import torch

    from tokencompose.tasks.grounding.grounded_sam import build_dino

    torch.manual_seed(0)
    model = build_dino(text_encoder)
    with torch.no_grad():
        model.transformer.decoder.norm.weight.mul_(DECODER_NORM_SCALE)
    torch.save({"model": model.state_dict()}, path)
    return path


def write_sam(path: Path, variant: str = "vit_tiny") -> Path:
    import torch
    from segment_anything_hq import sam_model_registry

    torch.manual_seed(0)
    torch.save(sam_model_registry[variant](checkpoint=None).state_dict(), path)
    return path


def train_tiny_tagger(path: Path, epochs: int = 60) -> Path:
    import torch
    from flair.data import Dictionary, Sentence
    from flair.embeddings import OneHotEmbeddings, StackedEmbeddings
    from flair.models import SequenceTagger

    torch.manual_seed(0)
    sentences = []
    for text, tags in CORPUS:
        sentence = Sentence(text)
        assert len(sentence) == len(tags.split()), text
        for token, tag in zip(sentence, tags.split()):
            token.add_label("pos", tag)
        sentences.append(sentence)
    words, tag_set = Dictionary(add_unk=True), Dictionary(add_unk=False)
    for sentence in sentences:
        for token in sentence:
            words.add_item(token.text)
            tag_set.add_item(token.get_label("pos").value)
    # flair 0.15 does not restore CharacterEmbeddings built on a custom dictionary when loading a
    # saved tagger, so the tiny tagger embeds words only (one-hot)
    embeddings = StackedEmbeddings([OneHotEmbeddings(words, embedding_length=16)])
    tagger = SequenceTagger(embeddings=embeddings, tag_dictionary=tag_set, tag_type="pos", hidden_size=24,
                            use_crf=False, dropout=0.0, word_dropout=0.0, locked_dropout=0.0)
    optimizer = torch.optim.Adam(tagger.parameters(), lr=0.05)
    for _ in range(epochs):
        for sentence in sentences:
            sentence.clear_embeddings()
        optimizer.zero_grad()
        loss, count = tagger.forward_loss(sentences)
        (loss / max(count, 1)).backward()
        optimizer.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    tagger.save(path)
    return path


def write_clip(path: Path, model: str = CLIP_MODEL) -> Path:
    import open_clip
    import torch

    torch.manual_seed(0)
    torch.save(open_clip.create_model(model, pretrained=None).state_dict(), path)
    return path


@functools.lru_cache(maxsize=None)
def build_models_dir() -> Path:
    """The random-weight models folder (built once per process, in a temporary folder)."""
    root = Path(tempfile.mkdtemp(prefix="tokencompose-models-"))
    bert = write_tiny_bert(root / "bert-base-uncased")
    write_dino(root / "groundingdino_swint_ogc.pth", bert)
    write_sam(root / "sam_hq_vit_tiny.pth")
    train_tiny_tagger(root / "flair" / "pos-english" / "pytorch_model.bin")
    write_clip(root / CLIP_FILE)
    return root


def paper_settings(models_dir: Path, out_dir: Path, profile: str = "paper", **grounding) -> dict:
    """Build settings for the bundled sample with the random models, small enough for the CPU."""
    from tokencompose.data import demo_settings

    return {**demo_settings(), "output": {"out_dir": str(out_dir), "require_mask": False}, "profile": profile,
            "captions": {"clip_model": CLIP_MODEL, "clip_pretrained": str(models_dir / CLIP_FILE),
                         "batch_size": 4},
            "grounding": {"sam_variant": "vit_tiny", "short_side": 224, "max_side": 320, "batch_size": 4,
                          **grounding},
            "models": {"models_dir": str(models_dir), "device": "cpu", "use_hf_cache": False}}


def sample_images(names: tuple[str, ...] = ()) -> list:
    """The bundled sample's images (RGB), all of them or the named file stems."""
    from PIL import Image

    from tokencompose.data import demo_settings

    folder = Path(demo_settings()["source"]["images_dir"])
    files = sorted(folder.glob("*.jpg")) if not names else [folder / f"{n}.jpg" for n in names]
    return [Image.open(f).convert("RGB") for f in files]


def calibrated_threshold(grounder, images, prompts, boxes_per_image: float = 3.0) -> float:
    """A box threshold that keeps about ``boxes_per_image`` boxes per image of these random-weight
    models (their scores have no meaning, so the paper's 0.25 would keep all 900 queries). Use half
    of it as the text threshold: a random box's best token is as often a separator as a noun."""
    import numpy as np

    saved = grounder.box_threshold, grounder.text_threshold
    grounder.box_threshold = grounder.text_threshold = 0.0
    try:
        scores = np.concatenate([d.scores for d in grounder.detect(images, prompts)])
    finally:
        grounder.box_threshold, grounder.text_threshold = saved
    ranked = np.sort(scores)[::-1]
    keep = min(len(ranked) - 1, max(1, int(boxes_per_image * len(images))))
    # midway between the last kept score and the next: a threshold equal to a box's own score would
    # keep or drop that box on a float rounding (batch vs one by one)
    return float((ranked[keep - 1] + ranked[keep]) / 2)
