"""Hybrid grounding: human annotation masks where they settle a noun, Grounded-SAM for the rest.

Without LVIS / COCO-Stuff files the human part is COCO's instances: a noun whose category the noun
table knows is grounded from them (exact human masks; a category the image does not annotate keeps
COCO's reason, since COCO annotates its 80 categories exhaustively). With them it is the human
grounding (tasks/grounding/human.py): a noun is settled by a mask from any source, or by a checked
absence (COCO or COCO-Stuff category not in the image, LVIS category in the image's negative list);
a noun no source names, or whose LVIS category the image leaves unverified, goes to the model.
Every unsettled noun of a batch goes to Grounded-SAM in one call.
"""
from __future__ import annotations

from typing import Sequence

from PIL import Image

from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.sample import BackendInfo, Grounding
from tokencompose.tasks.grounding.coco import CocoAnnotationGrounder, Grounder
from tokencompose.schemas.records import ImageRecord


class HybridGrounder:
    source = "hybrid"

    def __init__(self, coco: CocoAnnotationGrounder, model: Grounder, human=None):
        self.coco = coco
        self.model = model
        self.human = human  # a HumanGrounder when the source gives LVIS / COCO-Stuff files

    @classmethod
    def from_config(cls, config: BuildConfig) -> "HybridGrounder":
        from tokencompose.tasks.grounding.grounded_sam import GroundedSam

        coco = CocoAnnotationGrounder(config.grounding.noun_table, config.source.instances_json is not None)
        human = None
        if config.source.lvis_json or config.source.stuff_json:
            from tokencompose.tasks.grounding.human import HumanGrounder

            human = HumanGrounder(coco, config.grounding.human_order, bool(config.source.lvis_json),
                                  bool(config.source.stuff_json))
        return cls(coco, GroundedSam.from_config(config), human)

    def info(self) -> BackendInfo:
        coco, model = self.coco.info(), self.model.info()
        if self.human is not None:
            human = self.human.info()
            return BackendInfo(name="hybrid", version=f"{human.name} {human.version}; {model.version}",
                               details={"rule": "human annotation masks (COCO, LVIS, COCO-Stuff) for the nouns they "
                                                "settle, the model for the rest",
                                        "human": human.details, model.name: model.details})
        return BackendInfo(name="hybrid", version=f"{coco.name} {coco.version}; {model.version}",
                           details={"rule": "COCO annotation masks for nouns in the noun table, "
                                            "the model for the rest",
                                    "coco": coco.details, model.name: model.details})

    def uses_coco(self, noun: str) -> bool:
        return self.coco.has_instances and self.coco.nouns.category(noun) is not None

    def _human_grounding(self, record: ImageRecord, noun: str) -> Grounding | None:
        """The human annotations' grounding of a noun they settle, else None (the model grounds it)."""
        if self.human is not None:
            return self.human.ground_covered(record, noun)
        return self.coco.ground_noun(record, noun) if self.uses_coco(noun) else None

    def ground(self, images: Sequence[Image.Image], records: Sequence[ImageRecord],
               nouns: Sequence[Sequence[str]]) -> list[list[Grounding]]:
        results: list[list[Grounding | None]] = [[None] * len(image_nouns) for image_nouns in nouns]
        rest: list[list[int]] = []
        for i, (record, image_nouns) in enumerate(zip(records, nouns)):
            rest.append([])
            for j, noun in enumerate(image_nouns):
                human = self._human_grounding(record, noun)
                if human is not None:
                    results[i][j] = human
                else:
                    rest[i].append(j)
        todo = [i for i in range(len(nouns)) if rest[i]]
        if todo:
            grounded = self.model.ground([images[i] for i in todo], [records[i] for i in todo],
                                         [[nouns[i][j] for j in rest[i]] for i in todo])
            for i, image_groundings in zip(todo, grounded):
                for j, grounding in zip(rest[i], image_groundings):
                    results[i][j] = grounding
        return results  # type: ignore[return-value]
