"""OptiGen (seed 000, Bernas and Corlay): the category pairs a language model finds least likely together,
generated and scored like MultiGen's MG2.

1. A causal language model (transformers, loaded from a local folder; GPT-2 by default) scores
   log P(B | "a picture of A and") for every ordered pair of distinct categories: the prefix and " B"
   are tokenized apart and concatenated, and the score is the sum of the log-probabilities of B's
   tokens (several tokens for a multi-token name). Pairs run in padded batches (right padding with
   the attention mask; positions of the real tokens do not move).
2. The probability matrix (diagonal zero: a prompt never names a category twice) is made doubly
   stochastic by Sinkhorn iterations (rows, then columns, until every row and column sums to 1
   within ``tolerance``).
3. The N ordered pairs with the lowest normalised probability are chosen, ties broken by category
   order, and each becomes the prompt "a picture of A and B".
4. Their images are detected and scored as MultiGen's (tasks/multigen/metrics.py): the accuracy is
   MG2 of those prompts.
For k > 2 categories a tuple's score chains the normalised pair probabilities along it,
P(A1 -> A2) x P(A2 -> A3) x ... (a first-order chain over the matrix), the lowest tuples of distinct
categories are found by exact enumeration, the prompt is "a picture of A1, A2 and A3", and the
accuracy is MG_k.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tokencompose.tasks.models.weights import missing_files, read_folder_config
from tokencompose.tasks.multigen.prompts import BUNDLED, Prompt, load_prompts

PREFIX_TEMPLATE = "a picture of {a} and"
MAX_TUPLES = 50_000_000


class LanguageModelFolderError(ValueError):
    """A language-model folder that cannot be used; the message names the folder and the file."""


def coco80() -> list[str]:
    from tokencompose.tasks.evaluation.visor import coco_categories

    return coco_categories()


def ade20k100() -> list[str]:
    """The 100 ADE20K object categories of the bundled MultiGen ADE20K prompts, in order of first use."""
    names: dict[str, None] = {}
    for prompt in load_prompts(BUNDLED["ade20k"]):
        names.update(dict.fromkeys(prompt.categories))
    return list(names)


def check_language_model_folder(path: Path) -> list[str]:
    """What is wrong with ``path`` as a causal language model folder (empty: nothing)."""
    path = Path(path)
    config, problems = read_folder_config(path, "config.json", "no config.json (not a transformers model folder)")
    if problems:
        return problems
    config_file = path / "config.json"
    architectures = config.get("architectures") or []
    if architectures and not any(a.endswith(("LMHeadModel", "ForCausalLM")) for a in architectures):
        problems.append(f"{config_file}: architectures {architectures} are not causal language models")
    return problems + missing_files(path, [("model.safetensors", "pytorch_model.bin"), ("tokenizer.json", "vocab.json")])


def load_language_model(path: Path, device: str = "cpu"):
    """(model, tokenizer) from a local folder, the model in evaluation mode in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    problems = check_language_model_folder(path)
    if problems:
        raise LanguageModelFolderError("; ".join(problems))
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model: Any = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    model.to(device).eval()
    return model, tokenizer


def pair_sequences(tokenizer, categories: Sequence[str], template: str = PREFIX_TEMPLATE
                   ) -> list[tuple[int, int, list[int], int]]:
    """(i, j, token ids of prefix(A_i) + " " + B_j, number of B's tokens) for every ordered pair i != j."""
    prefixes = [tokenizer(template.format(a=c), add_special_tokens=False)["input_ids"] for c in categories]
    continuations = [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in categories]
    for number, tokens in enumerate(continuations):
        if not tokens:
            raise ValueError(f"category {number} ({categories[number]!r}) has no tokens")
    return [(i, j, prefixes[i] + continuations[j], len(continuations[j]))
            for i in range(len(categories)) for j in range(len(categories)) if i != j]


def continuation_log_probs(model, sequences: Sequence[Sequence[int]], lengths: Sequence[int], batch_size: int,
                           pad_id: int = 0) -> np.ndarray:
    """Per sequence: the summed log-probability of its last ``lengths[k]`` tokens given the ones before."""
    import torch

    device = next(model.parameters()).device
    out = np.empty(len(sequences), dtype=np.float64)
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, tokens in enumerate(chunk):
            ids[row, :len(tokens)] = torch.tensor(tokens)
            mask[row, :len(tokens)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        log_probs = torch.log_softmax(logits, dim=-1).cpu()
        for row, tokens in enumerate(chunk):
            n, length = len(tokens), lengths[start + row]
            # token t is predicted at position t - 1
            positions = torch.arange(n - length - 1, n - 1)
            targets = torch.tensor(tokens[n - length:])
            out[start + row] = float(log_probs[row, positions, targets].double().sum())
    return out


def pair_log_probs(model, tokenizer, categories: Sequence[str], batch_size: int = 64,
                   template: str = PREFIX_TEMPLATE) -> np.ndarray:
    """Matrix L[i, j] = log P(categories[j] | template(categories[i])), -inf on the diagonal."""
    pairs = pair_sequences(tokenizer, categories, template)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    values = continuation_log_probs(model, [p[2] for p in pairs], [p[3] for p in pairs], batch_size, pad_id)
    matrix = np.full((len(categories), len(categories)), -np.inf)
    for (i, j, _, _), value in zip(pairs, values):
        matrix[i, j] = value
    return matrix


@dataclass(frozen=True)
class Sinkhorn:
    matrix: np.ndarray
    iterations: int
    error: float


def sinkhorn(matrix: np.ndarray, tolerance: float = 1e-9, max_iterations: int = 100_000) -> Sinkhorn:
    """The doubly stochastic scaling D1 @ matrix @ D2 of a non-negative square matrix: rows then columns
    normalised in turn until every row and column sum is within ``tolerance`` of 1."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"Sinkhorn needs a square matrix of size >= 2, got shape {m.shape}")
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError("Sinkhorn needs finite, non-negative entries")
    if np.any(m.sum(axis=0) == 0) or np.any(m.sum(axis=1) == 0):
        raise ValueError("Sinkhorn needs every row and column to have a positive entry")
    error = float("inf")
    for iteration in range(1, max_iterations + 1):
        m = m / m.sum(axis=1, keepdims=True)
        m = m / m.sum(axis=0, keepdims=True)
        error = float(np.abs(m.sum(axis=1) - 1).max())  # columns are exact after their step
        if error <= tolerance:
            return Sinkhorn(m, iteration, error)
    raise ValueError(f"Sinkhorn did not reach tolerance {tolerance} in {max_iterations} iterations "
                     f"(row error {error:.3g}); the matrix may lack total support")


def normalised_pair_matrix(log_probs: np.ndarray, tolerance: float = 1e-9) -> Sinkhorn:
    """Sinkhorn of exp(log P) with the diagonal at zero. The probabilities are rescaled by their largest
    value first (Sinkhorn is invariant to a global scale), so tiny probabilities do not underflow."""
    finite = np.where(np.isfinite(log_probs), log_probs, -np.inf)
    probs = np.exp(finite - finite[np.isfinite(finite)].max())
    np.fill_diagonal(probs, 0.0)
    return sinkhorn(probs, tolerance)


def lowest_tuples(matrix: np.ndarray, count: int, size: int = 2, max_tuples: int = MAX_TUPLES
                  ) -> list[tuple[tuple[int, ...], float]]:
    """The ``count`` tuples of ``size`` distinct indices with the lowest chained product
    m[t0, t1] * m[t1, t2] * ..., ascending; ties by the indices (lexicographic). Exact enumeration."""
    n = matrix.shape[0]
    if count < 1:
        raise ValueError(f"the number of tuples to select must be positive, got {count}")
    if size < 2 or size > n:
        raise ValueError(f"tuple size must be between 2 and the number of categories ({n}), got {size}")
    total = int(np.prod([n - k for k in range(size)], dtype=np.float64))
    if total > max_tuples:
        raise ValueError(f"{total:,} ordered tuples of {size} among {n} categories exceed the enumeration limit "
                         f"{max_tuples:,}; use fewer categories or a smaller size")
    with np.errstate(divide="ignore"):
        log_m = np.log(np.asarray(matrix, dtype=np.float64))
    candidates: list[tuple[float, tuple[int, ...]]] = []
    for first in range(n):
        scores = log_m[first]                              # chains first -> j, shape (n,)
        for _ in range(size - 2):
            scores = scores[..., None] + log_m             # [..., j, k] = [..., j] + log m[j, k]
        rows = np.concatenate([np.full((scores.size, 1), first),
                               np.indices(scores.shape).reshape(size - 1, -1).T], axis=1)
        flat = scores.reshape(-1)
        distinct = np.ones(len(rows), dtype=bool)
        for a in range(size):
            for b in range(a + 1, size):
                distinct &= rows[:, a] != rows[:, b]
        flat, rows = flat[distinct], rows[distinct]
        if len(flat) > count:
            cut = np.partition(flat, count - 1)[count - 1]
            keep = flat <= cut                             # every tie at the cut stays, for determinism
            flat, rows = flat[keep], rows[keep]
        candidates.extend((float(v), tuple(int(x) for x in r)) for v, r in zip(flat, rows))
    candidates.sort()
    return [(t, float(np.exp(v))) for v, t in candidates[:count]]


def prompt_text(categories: Sequence[str]) -> str:
    """"a picture of A and B"; for more: "a picture of A, B and C"."""
    return "a picture of " + ", ".join(categories[:-1]) + " and " + categories[-1]


@dataclass(frozen=True)
class OptiGenSelection:
    categories: tuple[str, ...]
    size: int
    prompts: tuple[Prompt, ...]
    probabilities: tuple[float, ...]
    sinkhorn_iterations: int

    def to_dict(self) -> dict:
        return {"size": self.size, "categories": len(self.categories), "sinkhorn_iterations": self.sinkhorn_iterations,
                "prompts": [{"id": p.id, "text": p.text, "categories": list(p.categories), "probability": q}
                            for p, q in zip(self.prompts, self.probabilities)]}


def select_prompts(log_probs: np.ndarray, categories: Sequence[str], count: int, size: int = 2,
                   tolerance: float = 1e-9) -> OptiGenSelection:
    """The ``count`` least likely tuples of ``size`` categories as prompts (ids 0..count-1, lowest first)."""
    if log_probs.shape != (len(categories), len(categories)):
        raise ValueError(f"log-probability matrix {log_probs.shape} does not match {len(categories)} categories")
    normalised = normalised_pair_matrix(log_probs, tolerance)
    chosen = lowest_tuples(normalised.matrix, count, size)
    prompts = []
    for number, (indices, _) in enumerate(chosen):
        names = tuple(categories[i] for i in indices)
        prompts.append(Prompt(id=number, text=prompt_text(names), categories=names))
    return OptiGenSelection(tuple(categories), size, tuple(prompts), tuple(p for _, p in chosen),
                            normalised.iterations)


def accuracy(rows: Sequence[dict], size: int = 2, threshold: float = 0.1) -> dict:
    """OptiGen accuracy: MG_size of the detections of the selected prompts (mean and population std over
    the image rounds, in percent, as MultiGen reports), with the pooled share of images beside it."""
    from tokencompose.tasks.multigen.metrics import LEVELS, detected, score_rows

    if size not in LEVELS:
        raise ValueError(f"OptiGen accuracy is MultiGen's MG_k for k in {LEVELS}, got {size} categories")
    scores = score_rows(rows, threshold)
    scored = [r for r in rows if not r["nan"]]
    pooled = sum(len(detected(r, threshold)) >= size for r in scored) / len(scored) if scored else float("nan")
    return {"level": f"MG{size}", **scores.mg[f"MG{size}"], "pooled": pooled, "images": scores.images,
            "nan": scores.nan}
