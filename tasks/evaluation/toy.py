"""Random-weight models for the evaluation tests and benchmarks, built offline: a GPT-2 with a
byte-level BPE tokenizer trained on the OptiGen template and category names, and torch-fidelity's
InceptionV3 with random weights saved as a weights file, and an open_clip model saved as a checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def save_random_gpt2(path: Path, categories: Sequence[str], seed: int = 0, vocab_size: int = 300,
                     layers: int = 2, width: int = 32) -> Path:
    """A GPT-2 folder (config, weights, tokenizer) with random weights; the tokenizer is a byte-level BPE
    of ``vocab_size`` tokens learnt from "a picture of A and B" texts, so names split into several tokens."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    corpus = [f"a picture of {a} and {b}" for a in categories for b in categories]
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=width, n_layer=layers, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


def save_random_inception(path: Path, seed: int = 0) -> Path:
    """torch-fidelity's InceptionV3 (the FID network) with PyTorch's default random initialisation, saved as
    the state-dict file its ``feature_extractor_weights_path`` reads."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random initialisation
            return None

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    empty = path.with_name(f".{path.name}.empty")
    torch.save({}, empty)
    torch.manual_seed(seed)
    network = Unloaded("inception-random", ["2048"], feature_extractor_weights_path=str(empty))
    empty.unlink()
    torch.save(network.state_dict(), path)
    return path


def save_random_clip(path: Path, model_name: str = "ViT-S-32", seed: int = 0) -> Path:
    """An open_clip model of ``model_name``'s architecture with random weights, saved as the state-dict
    checkpoint file a CLIP score configuration names as ``pretrained``."""
    import open_clip
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, pretrained=None)
    torch.save(model.state_dict(), path)
    return path
