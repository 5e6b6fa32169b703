"""Human grounding: exact human masks from COCO instances, LVIS v1 and COCO-Stuff, in a set order.

A noun is tried in each annotation source of ``grounding.human_order`` (default coco, lvis, stuff)
that the source configuration gives; the first that yields a mask wins and the noun records it as
its ``source`` (coco_annotations, lvis_annotations, stuff_annotations). A noun none of them masks
keeps the reason of the first source that knows its category (LVIS's "verified absent" before any).

Noun -> category, per source, over the noun's look-up keys (whole phrase, then head word, each
also singular: :func:`grounding.lookup_keys`):

* COCO: the curated noun table (data/noun_categories.csv), as the coco grounding.
* LVIS: the curated table data/human_nouns.csv first, then LVIS's own names and synonyms, normalised
  (``bow_(weapon)`` -> "bow", underscores -> spaces). A key several categories share goes to the
  one whose name it is exactly, else whose name it is less a qualifier ("bow" of "bow_(weapon)"),
  else a synonym's; ties then go to the most frequent (f > c > r), then to the lowest id.
* COCO-Stuff: the file's names normalised, then data/human_nouns.csv (whose stuff targets are COCO
  panoptic's names, so that they hold with or without the file): "-other", "-stuff" and
  "-merged" dropped, "wall-brick" read as "brick wall" with head "wall". A head names the union of
  its categories ("wall": every wall-* region); "other" is never a category.
* Hypernyms (data/hypernyms.csv): "animal", "vehicle", "food", "fruit"... resolve to the union of
  the image's annotated members across all sources. A hypernym wins when no more specific key of
  the noun names a category ("animal" -> hypernym; "farm animal" -> hypernym through its head;
  "dog" -> COCO).

LVIS is federated: a category is checked present (annotated), checked absent (``neg_category_ids``,
reason ``category_verified_absent``) or unknown (``category_not_verified_in_image``); a mask of a
category in ``not_exhaustive_category_ids`` is kept and flagged: its source reads
``lvis_annotations_not_exhaustive``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from PIL import Image

from tokencompose.data import DATA_DIR
from tokencompose.schemas.sample import BackendInfo, CocoRLE, Grounding
from tokencompose.schemas.reasons import NounReason
from tokencompose.tasks.grounding import masks
from tokencompose.tasks.grounding.coco import CocoAnnotationGrounder, NounTable, load_coco_categories, lookup_keys
from tokencompose.schemas.records import Annotation, ImageRecord

DATA = DATA_DIR
LVIS_CATEGORIES = DATA / "lvis_categories.json"
PANOPTIC_CATEGORIES = DATA / "coco_panoptic_categories.json"
COCO_STUFF_CATEGORIES = DATA / "coco_stuff_categories.json"
HUMAN_NOUNS = DATA / "human_nouns.csv"
HYPERNYMS = DATA / "hypernyms.csv"
WORDNET_NOUNS = DATA / "wordnet_nouns.csv"
WORDNET_UNIONS = DATA / "wordnet_unions.csv"

SOURCE_COCO = "coco_annotations"
SOURCE_LVIS = "lvis_annotations"
SOURCE_LVIS_NOT_EXHAUSTIVE = "lvis_annotations_not_exhaustive"
SOURCE_STUFF = "stuff_annotations"
SOURCE_LABELS = {"coco": SOURCE_COCO, "lvis": SOURCE_LVIS, "stuff": SOURCE_STUFF}


# Reasons that settle a noun: the hybrid grounding does not ask the detector about it.
SETTLED_REASONS = frozenset({NounReason.CATEGORY_NOT_ANNOTATED, NounReason.CATEGORY_VERIFIED_ABSENT,
                             NounReason.BAD_ANNOTATION, NounReason.EMPTY_MASK})

_FREQUENCY_RANK = {"f": 0, "c": 1, "r": 2}
_STUFF_DROP = {"other", "stuff", "merged"}
# COCO-Stuff names whose second part is the object, not a kind of the first ("window-blind" is a blind)
_STUFF_COMPOUNDS = {"window-blind": ("window blind", "blind")}


def normalise_lvis(name: str) -> str:
    """An LVIS name or synonym as a look-up key: ``bow_(weapon)`` -> "bow", ``T-shirt`` -> "t-shirt"."""
    return " ".join(re.sub(r"\([^)]*\)", " ", name.replace("_", " ")).lower().split())


def stuff_keys(name: str) -> tuple[str, str] | None:
    """(phrase, head) of a COCO-Stuff or panoptic stuff name, or None for "other":
    "wall-brick" -> ("brick wall", "wall"), "sky-other-merged" -> ("sky", "sky")."""
    name = name.strip().lower()
    base = name[: -len("-merged")] if name.endswith("-merged") else name
    if base in _STUFF_COMPOUNDS:
        return _STUFF_COMPOUNDS[base]
    parts = [p for p in base.replace("_", " ").split("-") if p and p not in _STUFF_DROP]
    if not parts or name == "other":
        return None
    head = parts[0]
    return " ".join(parts[1:] + [head]), head


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class LvisVocabulary:
    """LVIS categories by look-up key, with the tie rule of the module docstring."""

    def __init__(self, categories: Iterable[dict]):
        self.names: dict[int, str] = {}
        ranked: dict[str, tuple] = {}
        for category in categories:
            category_id, name = int(category["id"]), str(category["name"])
            self.names[category_id] = name
            frequency = _FREQUENCY_RANK.get(category.get("frequency", "r"), 2)
            for synonym in [name, *category.get("synonyms", [])]:
                key = normalise_lvis(synonym)
                if not key:
                    continue
                match = 0 if " ".join(name.replace("_", " ").lower().split()) == key else (
                    1 if normalise_lvis(name) == key else 2)  # the name itself, the name less its qualifier, a synonym
                rank = (match, frequency, category_id)
                if key not in ranked or rank < ranked[key]:
                    ranked[key] = rank
        self.index: dict[str, int] = {key: rank[2] for key, rank in ranked.items()}
        self.by_name: dict[str, int] = {name: i for i, name in self.names.items()}


@lru_cache(maxsize=1)
def lvis_vocabulary() -> LvisVocabulary:
    return LvisVocabulary(json.loads(LVIS_CATEGORIES.read_text(encoding="utf-8")))


def panoptic_stuff_names() -> list[str]:
    return [c["name"] for c in json.loads(PANOPTIC_CATEGORIES.read_text(encoding="utf-8")) if not c["isthing"]]


def coco_stuff_names() -> list[str]:
    """COCO-Stuff's 91 stuff category names and "other", as its stuff_*.json files list them."""
    return [c["name"] for c in json.loads(COCO_STUFF_CATEGORIES.read_text(encoding="utf-8"))]


class StuffVocabulary:
    """COCO-Stuff category names by look-up key: a full phrase names one category, a head all of its kind."""

    def __init__(self, names: Iterable[str]):
        self.index: dict[str, tuple[str, ...]] = {}
        heads: dict[str, list[str]] = {}
        for name in names:
            keys = stuff_keys(name)
            if keys is None:
                continue
            phrase, head = keys
            self.index.setdefault(phrase, (name,))
            heads.setdefault(head, []).append(name)
        for head, members in heads.items():
            if head not in self.index or len(members) > 1:
                self.index[head] = tuple(sorted(members))
        self.heads = set(heads)


@dataclass(frozen=True)
class Target:
    source: str  # coco, lvis or stuff
    name: str  # COCO category name, LVIS category name, or stuff head / phrase


def _parse_target(text: str, where: str) -> Target:
    source, _, name = text.strip().partition(":")
    if source not in SOURCE_LABELS or not name.strip():
        raise ValueError(f"{where}: a target is coco:NAME, lvis:NAME or stuff:NAME, got {text!r}")
    return Target(source, name.strip())


@lru_cache(maxsize=1)
def _known_categories() -> dict[str, frozenset[str]]:
    return {"coco": frozenset(load_coco_categories()), "lvis": frozenset(lvis_vocabulary().by_name),
            "stuff": frozenset(StuffVocabulary(coco_stuff_names() + panoptic_stuff_names()).index)}


def _check_target(target: Target, where: str) -> None:
    if target.name not in _known_categories()[target.source]:
        raise ValueError(f"{where}: {target.source} has no category {target.name!r}")


def _rows(path: Path):
    with open(path, newline="", encoding="utf-8") as handle:
        for line_no, row in enumerate(csv.DictReader(handle), start=2):
            yield f"{path.name}:{line_no}", row


def _read_unions(path: Path, into: dict[str, list[Target]]) -> None:
    """hypernym -> members rows; a member ``hypernym:NAME`` stands for the members of a hypernym the
    file defines above ("herd" -> hypernym:animal). A hypernym already in ``into`` keeps its members
    (earlier tables win)."""
    read: dict[str, list[Target]] = {}
    for where, row in _rows(path):
        hypernym = (row.get("hypernym") or "").strip().lower()
        if not hypernym:
            raise ValueError(f"{where}: no hypernym")
        members: list[Target] = []
        for text in (t.strip() for t in (row.get("members") or "").split(";") if t.strip()):
            if text.startswith("hypernym:"):
                name = text.partition(":")[2].strip().lower()
                if name not in read:
                    raise ValueError(f"{where}: {text!r} names no hypernym defined above it")
                members += read[name]
                continue
            member = _parse_target(text, where)
            _check_target(member, where)
            members.append(member)
        read.setdefault(hypernym, []).extend(members)
    for hypernym, members in read.items():
        into.setdefault(hypernym, members)


class HumanNounTable:
    """The curated tables: noun -> LVIS / COCO-Stuff target (human_nouns.csv), hypernym -> members
    (hypernyms.csv); then the tables generated from WordNet (data/make_wordnet_tables.py): noun -> the
    nearest category per source up its IS-A chain (wordnet_nouns.csv), and noun -> the categories below
    it (wordnet_unions.csv, read as hypernyms). The curated tables win where both name a noun."""

    def __init__(self, nouns_path: Path = HUMAN_NOUNS, hypernyms_path: Path = HYPERNYMS,
                 include_generated: bool = True, wordnet_nouns: Path = WORDNET_NOUNS,
                 wordnet_unions: Path = WORDNET_UNIONS):
        self.nouns: dict[str, Target] = {}
        for where, row in _rows(nouns_path):
            noun = (row.get("noun") or "").strip().lower()
            target = _parse_target(row.get("target") or "", where)
            if not noun or target.source == "coco":
                raise ValueError(f"{where}: needs a noun and an lvis: or stuff: target (COCO nouns are in "
                                 f"noun_categories.csv)")
            _check_target(target, where)
            self.nouns[noun] = target
        self.hypernyms: dict[str, list[Target]] = {}
        _read_unions(hypernyms_path, self.hypernyms)
        self.generated: dict[str, dict[str, Target]] = {}
        tables = [nouns_path, hypernyms_path]
        if include_generated:
            for where, row in _rows(wordnet_nouns):
                targets = [_parse_target(t, where) for t in (row.get("targets") or "").split(";") if t.strip()]
                for target in targets:
                    _check_target(target, where)
                self.generated[(row.get("noun") or "").strip().lower()] = {t.source: t for t in targets}
            _read_unions(wordnet_unions, self.hypernyms)
            tables += [wordnet_nouns, wordnet_unions]
        self.sha256 = hashlib.sha256(b"".join(path.read_bytes() for path in tables)).hexdigest()[:16]

    def target(self, key: str, source: str) -> Target | None:
        """The curated target of ``key`` when it is ``source``'s, else the generated one."""
        curated = self.nouns.get(key)
        if curated is not None and curated.source == source:
            return curated
        return self.generated.get(key, {}).get(source)


@dataclass(frozen=True)
class Resolution:
    """Where a noun's look-up keys lead: per source the first key's category (and that key's rank)."""

    per_source: dict  # source -> (key rank, category: COCO name | LVIS id | tuple of stuff names)
    hypernym: tuple[int, str] | None  # (key rank, hypernym)

    def sources_in_order(self, order: Sequence[str]) -> list[str]:
        """The sources that name the noun, most specific key first, then in ``order``: "launch pad" tries
        COCO-Stuff's platform (the whole phrase) before LVIS's pad (the head word alone); "wall clock"
        still falls back to COCO's clock when LVIS's wall clock is not annotated."""
        position = {source: i for i, source in enumerate(order)}
        named = [s for s in self.per_source if s in position]
        return sorted(named, key=lambda s: (self.per_source[s][0], position[s]))

    def uses_hypernym(self) -> bool:
        if self.hypernym is None:
            return False
        return all(rank >= self.hypernym[0] for rank, _ in self.per_source.values())


class NounResolver:
    """Noun -> category per source and hypernym, without any image (the coverage benchmark uses it too).
    COCO-Stuff names are those given (a file's), else COCO-Stuff's own 91."""

    def __init__(self, coco_table: NounTable, stuff_names: Iterable[str] | None = None,
                 curated: HumanNounTable | None = None):
        self.coco = coco_table
        self.lvis = lvis_vocabulary()
        self.curated = curated or HumanNounTable()
        self.stuff = stuff_vocabulary(tuple(stuff_names) if stuff_names is not None else tuple(coco_stuff_names()))

    def resolve(self, noun: str, stuff: StuffVocabulary | None = None) -> Resolution:
        stuff = stuff or self.stuff
        per_source: dict = {}
        hypernym = None
        curated = self.curated
        for rank, key in enumerate(lookup_keys(noun)):
            if "coco" not in per_source:
                target = curated.target(key, "coco")
                category = self.coco.table.get(key) or (target.name if target else None)
                if category is not None:
                    per_source["coco"] = (rank, category)
            if "lvis" not in per_source:
                target = curated.nouns.get(key)
                if target is not None and target.source == "lvis":
                    per_source["lvis"] = (rank, self.lvis.by_name[target.name])
                elif key in self.lvis.index:
                    per_source["lvis"] = (rank, self.lvis.index[key])
                elif (target := curated.target(key, "lvis")) is not None:
                    per_source["lvis"] = (rank, self.lvis.by_name[target.name])
            if "stuff" not in per_source:
                # the file's own name first ("carpet" is a COCO-Stuff category; panoptic merges it into "rug")
                target = curated.target(key, "stuff")
                name = key if key in stuff.index or target is None else target.name
                if name in stuff.index:
                    per_source["stuff"] = (rank, stuff.index[name])
            if hypernym is None and key in self.curated.hypernyms:
                hypernym = (rank, key)
        return Resolution(per_source, hypernym)


@lru_cache(maxsize=8)
def stuff_vocabulary(names: tuple[str, ...]) -> StuffVocabulary:
    return StuffVocabulary(names)


@dataclass(frozen=True)
class _Found:
    mask: dict | None
    reason: NounReason | None
    boxes: list
    not_exhaustive: bool = False


def _union(record: ImageRecord, instances: Sequence[Annotation]) -> _Found:
    if not instances:
        return _Found(None, NounReason.CATEGORY_NOT_ANNOTATED, [])
    if any(a.problem for a in instances):
        return _Found(None, NounReason.BAD_ANNOTATION, [])
    try:
        rles = [masks.segmentation_to_rle(a.segmentation, record.height, record.width) for a in instances]
    except masks.SegmentationProblem:
        return _Found(None, NounReason.BAD_ANNOTATION, [])
    mask = masks.union(rles)
    if masks.area(mask) == 0:
        return _Found(None, NounReason.EMPTY_MASK, [])
    return _Found(mask, None, [tuple(float(v) for v in a.bbox) for a in instances])


class HumanGrounder:
    """Masks from every human annotation file the source gives, tried in ``order``."""

    def __init__(self, coco: CocoAnnotationGrounder, order: Sequence[str], has_lvis: bool, has_stuff: bool,
                 stuff_names: Iterable[str] | None = None, curated: HumanNounTable | None = None):
        self.coco = coco
        present = {"coco": coco.has_instances, "lvis": has_lvis, "stuff": has_stuff}
        self.order = [s for s in order if present[s]]
        self.configured_order = list(order)
        self.resolver = NounResolver(coco.nouns, stuff_names, curated)
        self.coco_ids = coco.category_ids

    @classmethod
    def from_config(cls, config) -> "HumanGrounder":
        coco = CocoAnnotationGrounder(config.grounding.noun_table, config.source.instances_json is not None)
        return cls(coco, config.grounding.human_order, bool(config.source.lvis_json), bool(config.source.stuff_json))

    def info(self) -> BackendInfo:
        from importlib.metadata import version

        return BackendInfo(name="human", version=version("pycocotools"), details={
            "order": ",".join(self.order), "noun_table": self.coco.nouns.path.name,
            "noun_table_sha256": self.coco.nouns.sha256, "human_tables_sha256": self.resolver.curated.sha256,
            "lvis_categories_sha256": _sha(LVIS_CATEGORIES)})

    def ground(self, images: Sequence[Image.Image], records: Sequence[ImageRecord],
               nouns: Sequence[Sequence[str]]) -> list[list[Grounding]]:
        return [[self.ground_noun(record, noun) for noun in image_nouns]
                for record, image_nouns in zip(records, nouns)]

    def ground_covered(self, record: ImageRecord, noun: str) -> Grounding | None:
        """The noun's grounding when the human annotations settle it (a mask, or a checked absence);
        None when none of them can say (the hybrid asks the detector)."""
        grounding = self.ground_noun(record, noun)
        return grounding if grounding.mask is not None or grounding.reason in SETTLED_REASONS else None

    def _stuff_vocabulary(self, record: ImageRecord) -> StuffVocabulary:
        if record.human is not None and record.human.stuff is not None:
            return stuff_vocabulary(tuple(sorted(set(record.human.stuff_names.values()))))
        return self.resolver.stuff

    def ground_noun(self, record: ImageRecord, noun: str) -> Grounding:
        stuff = self._stuff_vocabulary(record)
        resolution = self.resolver.resolve(noun, stuff)
        if resolution.hypernym is not None and resolution.uses_hypernym():
            return self._hypernym(record, resolution.hypernym[1], stuff)
        chosen: Grounding | None = None
        for source in resolution.sources_in_order(self.order):
            category = resolution.per_source[source][1]
            by_source: dict[str, Callable[[ImageRecord, str, Any], Grounding]] = {
                "coco": self._coco, "lvis": self._lvis, "stuff": self._stuff}
            grounding = by_source[source](record, noun, category)
            if grounding.mask is not None:
                return grounding
            if chosen is None or (grounding.reason == NounReason.CATEGORY_VERIFIED_ABSENT != chosen.reason):
                chosen = grounding
        return chosen or Grounding(reason=NounReason.NO_HUMAN_CATEGORY)

    def _coco(self, record: ImageRecord, noun: str, category: str) -> Grounding:
        return self.coco.ground_category(record, category)

    def _lvis(self, record: ImageRecord, noun: str, category_id: int) -> Grounding:
        name = self.resolver.lvis.names[category_id]
        human = record.human
        if human is None or human.lvis is None:
            reason = NounReason.IMAGE_NOT_IN_LVIS if human else NounReason.NO_INSTANCE_ANNOTATIONS
            return Grounding(category=name, reason=reason)
        if category_id in human.lvis_negative:
            return Grounding(category=name, reason=NounReason.CATEGORY_VERIFIED_ABSENT)
        found = _union(record, [a for a in human.lvis if a.category_id == category_id])
        if found.reason == NounReason.CATEGORY_NOT_ANNOTATED:
            return Grounding(category=name, reason=NounReason.CATEGORY_NOT_VERIFIED)
        if found.mask is None:
            return Grounding(category=name, reason=found.reason)
        source = SOURCE_LVIS_NOT_EXHAUSTIVE if category_id in human.lvis_not_exhaustive else SOURCE_LVIS
        return Grounding(mask=CocoRLE.model_validate(found.mask), box=masks.box(found.mask), category=name, source=source, boxes=found.boxes)

    @staticmethod
    def _stuff_instances(record: ImageRecord, names: Iterable[str]) -> list[Annotation]:
        human = record.human
        if human is None or human.stuff is None:
            return []
        wanted = set(names)
        return [a for a in human.stuff if human.stuff_names.get(a.category_id) in wanted]

    def _stuff(self, record: ImageRecord, noun: str, names: tuple[str, ...]) -> Grounding:
        keys = stuff_keys(names[0])
        category = names[0] if len(names) == 1 or keys is None else keys[1]  # one category, or the head's kind
        if record.human is None or record.human.stuff is None:
            return Grounding(category=category, reason=NounReason.NO_INSTANCE_ANNOTATIONS)
        found = _union(record, self._stuff_instances(record, names))
        if found.mask is None:
            return Grounding(category=category, reason=found.reason)
        return Grounding(mask=CocoRLE.model_validate(found.mask), box=masks.box(found.mask), category=category, source=SOURCE_STUFF,
                         boxes=found.boxes)

    def _hypernym(self, record: ImageRecord, hypernym: str, stuff: StuffVocabulary) -> Grounding:
        """The union of the image's annotated members of ``hypernym``, across the sources in order."""
        members = self.resolver.curated.hypernyms[hypernym]
        human = record.human
        contributed: list[str] = []
        instances: list[Annotation] = []
        not_exhaustive = False
        for source in self.order:
            wanted = [m.name for m in members if m.source == source]
            if source == "coco":
                ids = {self.coco_ids[n] for n in wanted}
                found = [a for a in record.annotations if a.category_id in ids]
            elif source == "lvis":
                ids = {self.resolver.lvis.by_name[n] for n in wanted}
                found = [a for a in (human.lvis or ()) if a.category_id in ids] if human else []
                if human is not None:
                    not_exhaustive |= any(a.category_id in human.lvis_not_exhaustive for a in found)
            else:
                found = self._stuff_instances(record, [n for name in wanted for n in stuff.index.get(name, ())])
            if found:
                contributed.append(source)
                instances += found
        result = _union(record, instances)
        if result.mask is None:
            return Grounding(category=hypernym, reason=result.reason)
        labels = [SOURCE_LABELS[s] for s in contributed]
        if not_exhaustive:
            labels = [SOURCE_LVIS_NOT_EXHAUSTIVE if label == SOURCE_LVIS else label for label in labels]
        return Grounding(mask=CocoRLE.model_validate(result.mask), box=masks.box(result.mask), category=hypernym, source="+".join(labels),
                         boxes=result.boxes)
