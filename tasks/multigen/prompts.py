"""MultiGen prompts: the paper's two sets (bundled), a loader that checks every row, and a seeded sampler.

A prompt names five distinct categories in "a photo of a A, a B, a C, a D, and a E." The bundled
files are the authors' (Apache-2.0, see data/multigen/NOTICE); their rows look like
``{"unique_id": 0, "num_objects": 5, "obj_1_attributes": ["book"], ..., "text": "a photo of a book, ..."}``.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tokencompose.data import DATA_DIR

MULTIGEN_DIR = DATA_DIR / "multigen"
BUNDLED = {"coco": MULTIGEN_DIR / "coco_obj_comp_5_1k.json", "ade20k": MULTIGEN_DIR / "ade20k_obj_comp_5_1k.json"}
OBJECTS = 5


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message names the file and the row."""


@dataclass(frozen=True)
class Prompt:
    id: int
    text: str
    categories: tuple[str, ...]
    where: str = field(default="", compare=False)     # "<file>: row N", for messages

    def spans(self) -> list[tuple[int, int]]:
        """Character span of each category in the text, found left to right."""
        spans, cursor = [], 0
        for category in self.categories:
            start = self.text.index(category, cursor)
            cursor = start + len(category)
            spans.append((start, cursor))
        return spans

    def to_row(self) -> dict:
        row: dict = {"unique_id": self.id, "num_objects": len(self.categories)}
        for k, category in enumerate(self.categories, 1):
            row[f"obj_{k}_attributes"] = [category]
        row["text"] = self.text
        return row


def article(word: str, correct: bool) -> str:
    return "an" if correct and word[:1].lower() in "aeiou" else "a"


def prompt_text(categories: Sequence[str], correct_articles: bool = False) -> str:
    """The MultiGen template: "a photo of a A, a B, a C, a D, and a E." ("an" only when asked)."""
    parts = [f"{article(c, correct_articles)} {c}" for c in categories]
    return "a photo of " + ", ".join(parts[:-1]) + ", and " + parts[-1] + "."


def _unencodable(text: str) -> bool:
    """A string UTF-8 cannot write (a lone surrogate, as JSON's "\\ud800" escape gives)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _row_prompt(path: Path, number: int, row: object) -> Prompt:
    where = f"{path}: row {number}"
    if not isinstance(row, dict):
        raise PromptFileError(f"{where}: expected an object, found {type(row).__name__}")
    missing = [k for k in ("unique_id", "text") if k not in row]
    if missing:
        raise PromptFileError(f"{where}: missing {', '.join(missing)}")
    categories: list[str] = []
    k = 1
    while f"obj_{k}_attributes" in row:
        value = row[f"obj_{k}_attributes"]
        if not (isinstance(value, list) and value and isinstance(value[0], str) and value[0].strip()):
            raise PromptFileError(f"{where}: obj_{k}_attributes must be a list starting with the category name, "
                                  f"got {value!r}")
        if _unencodable(value[0]):
            raise PromptFileError(f"{where}: obj_{k}_attributes holds a string that cannot be encoded as UTF-8 "
                                  f"({value[0]!r})")
        categories.append(value[0].strip())
        k += 1
    if len(categories) != OBJECTS:
        raise PromptFileError(f"{where}: {len(categories)} categories, MultiGen prompts have {OBJECTS}")
    if "num_objects" in row and row["num_objects"] != len(categories):
        raise PromptFileError(f"{where}: num_objects is {row['num_objects']} but the row names {len(categories)}")
    repeated = sorted({c for c in categories if categories.count(c) > 1})
    if repeated:
        raise PromptFileError(f"{where}: repeated categories {repeated}; the five must be distinct")
    if not isinstance(row["unique_id"], int) or isinstance(row["unique_id"], bool) or row["unique_id"] < 0:
        raise PromptFileError(f"{where}: unique_id must be a non-negative integer, got {row['unique_id']!r}")
    text = row["text"]
    if not isinstance(text, str):
        raise PromptFileError(f"{where}: text must be a string")
    if _unencodable(text):
        raise PromptFileError(f"{where}: text cannot be encoded as UTF-8 ({text!r})")
    if text not in (prompt_text(categories, False), prompt_text(categories, True)):
        raise PromptFileError(f"{where}: text {text!r} is not the MultiGen template for {categories} "
                              f"(expected {prompt_text(categories)!r})")
    return Prompt(id=row["unique_id"], text=text, categories=tuple(categories), where=where)


def load_prompts(path: str | Path) -> list[Prompt]:
    """Every prompt of a file, checked row by row; a bad row stops with the file and row number (from 0)."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PromptFileError(f"{path}: no such prompt file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PromptFileError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(rows, list) or not rows:
        raise PromptFileError(f"{path}: expected a non-empty JSON list of prompt rows")
    prompts = [_row_prompt(path, number, row) for number, row in enumerate(rows)]
    seen: dict[int, int] = {}
    for number, prompt in enumerate(prompts):
        if prompt.id in seen:
            raise PromptFileError(f"{path}: row {number}: unique_id {prompt.id} repeats row {seen[prompt.id]}")
        seen[prompt.id] = number
    return prompts


def bundled(name: str) -> list[Prompt]:
    if name not in BUNDLED:
        raise ValueError(f"no bundled MultiGen set {name!r}; known: {', '.join(BUNDLED)}")
    return load_prompts(BUNDLED[name])


def read_categories(path: str | Path) -> list[str]:
    """A category list: a JSON list of names, or one name a line (blank lines and # comments skipped)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        names = json.loads(text)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise PromptFileError(f"{path}: expected a JSON list of category names")
    else:
        names = [line.split("#", 1)[0] for line in text.splitlines()]
    bad = [n for n in names if _unencodable(n)]
    if bad:
        raise PromptFileError(f"{path}: category {bad[0]!r} cannot be encoded as UTF-8")
    names = [n.strip() for n in names if n.strip()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PromptFileError(f"{path}: repeated categories {repeated}")
    return names


def sample_prompts(categories: Sequence[str], count: int, seed: int = 0, correct_articles: bool = False,
                   objects: int = OBJECTS, source: str = "sampled") -> list[Prompt]:
    """``count`` prompts of ``objects`` distinct categories each, drawn uniformly with a seeded RNG.

    The same (categories, count, seed) always gives the same prompts, in any Python process."""
    names = list(dict.fromkeys(c.strip() for c in categories if c.strip()))
    if len(names) < objects:
        raise ValueError(f"need at least {objects} distinct categories to sample prompts, got {len(names)}")
    rng = random.Random(seed)
    prompts = []
    for index in range(count):
        chosen = rng.sample(names, objects)
        prompts.append(Prompt(id=index, text=prompt_text(chosen, correct_articles), categories=tuple(chosen),
                              where=f"{source}: sampled prompt {index}"))
    return prompts


def write_prompts(prompts: Sequence[Prompt], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([p.to_row() for p in prompts], indent=1) + "\n", encoding="utf-8")
    return path


def all_prompts_for(benchmark) -> list[Prompt]:
    """Every prompt a :class:`~tokencompose.schemas.evaluation.BenchmarkConfig` names (no limit)."""
    if benchmark.file is not None:
        return load_prompts(benchmark.file)
    if benchmark.categories_file is not None:
        return sample_prompts(read_categories(benchmark.categories_file), benchmark.sample_count,
                              benchmark.sample_seed, benchmark.correct_articles, source=str(benchmark.categories_file))
    return bundled(benchmark.name)


def prompts_for(benchmark) -> list[Prompt]:
    """The prompts of the run: the first ``limit`` (quick mode) or all."""
    prompts = all_prompts_for(benchmark)
    return prompts[:benchmark.limit] if benchmark.limit else prompts


def prompts_fingerprint(prompts: Sequence[Prompt]) -> str:
    blob = json.dumps([[p.id, p.text, list(p.categories)] for p in prompts], separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def token_count(tokenizer, text: str) -> int:
    """Tokens of ``text`` with the tokenizer's special tokens (CLIP's start and end), untruncated."""
    return len(tokenizer(text, truncation=False)["input_ids"])


def window_problems(prompts: Sequence[Prompt], text_tokenizer, text_window: int, query_tokenizer, query_window: int,
                    query_template: str, most: int = 10) -> list[str]:
    """Prompts the models cannot take whole, one line each (at most ``most``, then a count): a text
    longer than the text encoder's window (CLIP: 77 tokens with start and end), a category that is
    no token at all, or whose detector query (``query_template``) is longer than the detector's text
    window (OWLv2: 16). A category is named once, at its first prompt."""
    problems: list[str] = []
    seen: set[str] = set()
    for prompt in prompts:
        length = token_count(text_tokenizer, prompt.text)
        if length > text_window:
            problems.append(f"{prompt.where}: the text is {length} tokens, the text encoder's window is "
                            f"{text_window}")
        for category in prompt.categories:
            if category in seen:
                continue
            seen.add(category)
            if token_count(text_tokenizer, category) <= token_count(text_tokenizer, ""):
                problems.append(f"{prompt.where}: category {category!r} is no token for the text encoder (empty)")
                continue
            query = query_template.format(category=category)
            length = token_count(query_tokenizer, query)
            if length > query_window:
                problems.append(f"{prompt.where}: category {category!r} makes the detector query {query!r} "
                                f"{length} tokens, the detector's text window is {query_window}")
    if len(problems) > most:
        problems = problems[:most] + [f"... and {len(problems) - most} more prompt problems of the same kinds"]
    return problems
