"""Hybrid grounding: COCO's own annotation masks where a noun maps to a COCO category, Grounded-SAM
for the rest.

A noun whose category the noun table knows is grounded from the image's COCO instances (exact
human masks; a category the image does not annotate keeps COCO's reason, since COCO annotates
its 80 categories exhaustively). Every other noun -- and every noun when the source has no
instances file -- goes to Grounded-SAM, all of a batch's such nouns in one call.
"""
from __future__ import annotations

from typing import Sequence

from PIL import Image

from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.sample import BackendInfo
from tokencompose.tasks.grounding import CocoAnnotationGrounder, Grounder, Grounding
from tokencompose.tasks.records import ImageRecord


class HybridGrounder:
    source = "hybrid"

    def __init__(self, coco: CocoAnnotationGrounder, model: Grounder):
        self.coco = coco
        self.model = model

    @classmethod
    def from_config(cls, config: BuildConfig) -> "HybridGrounder":
        from tokencompose.tasks.grounded_sam import GroundedSam

        coco = CocoAnnotationGrounder(config.grounding.noun_table, config.source.instances_json is not None)
        return cls(coco, GroundedSam.from_config(config))

    def info(self) -> BackendInfo:
        coco, model = self.coco.info(), self.model.info()
        return BackendInfo(name="hybrid", version=f"{coco.name} {coco.version}; {model.version}",
                           details={"rule": "COCO annotation masks for nouns in the noun table, "
                                            "the model for the rest",
                                    "coco": coco.details, model.name: model.details})

    def uses_coco(self, noun: str) -> bool:
        return self.coco.has_instances and self.coco.nouns.category(noun) is not None

    def ground(self, images: Sequence[Image.Image], records: Sequence[ImageRecord],
               nouns: Sequence[Sequence[str]]) -> list[list[Grounding]]:
        results: list[list[Grounding | None]] = [[None] * len(image_nouns) for image_nouns in nouns]
        rest: list[list[int]] = []
        for i, (record, image_nouns) in enumerate(zip(records, nouns)):
            rest.append([])
            for j, noun in enumerate(image_nouns):
                if self.uses_coco(noun):
                    results[i][j] = self.coco.ground_noun(record, noun)
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
