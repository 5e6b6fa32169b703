"""Building one shard: images -> caption -> nouns -> masks -> one WebDataset tar plus its index.

The tar is written under a temporary name and renamed last, so a shard file on disk is always
complete. Members carry fixed metadata (ustar headers, mtime 0, no owner names; tasks/shards/shard_io.py)
so equal inputs give equal bytes.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.reports import (INDEX_DIR, SHARDS_DIR, MemberLocation, Reject, ShardIndex, ShardStats,
                                          ShardSummary, canonical_json, temporary_name, write_atomic)
from tokencompose.schemas.sample import (JSON_FIELD, CaptionCandidate, Grounding, Noun, Provenance, SampleRecord,
                                         sample_key)
from tokencompose.schemas.reasons import NounReason, RejectReason
from tokencompose.tasks.captions import ranking as caption_stage
from tokencompose.tasks.models.backends import Backends
from tokencompose.tasks.source.dataset_rows import RowRange
from tokencompose.tasks.source.images import ImageProblem, LoadedImage, decode_image, image_path, load_image
from tokencompose.tasks.nouns.extraction import is_stop_listed, lookup_text
from tokencompose.schemas.records import Caption, ImageRecord, NounPhrase
from tokencompose.tasks.shards.shard_io import write_tar

CHUNK = 32  # images decoded and sent through the models at once; bounds memory per shard


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def shard_number(name: str) -> int:
    """The number in a shard's name (``shard-000012.tar`` -> 12)."""
    return int(name[len("shard-"):-len(".tar")])


@dataclass
class _Pending:
    record: ImageRecord
    image: LoadedImage
    ranked: list[Caption]
    excluded: list[tuple[Caption, str]]


class ShardBuilder:
    """Turns a batch of image records into samples and rejects."""

    def __init__(self, config: BuildConfig, backends: Backends, provenance: Provenance):
        self.config = config
        self.backends = backends
        self.provenance = provenance
        self.stop_list = frozenset(config.nouns.resolved_stop_list(config.profile))
        self.seconds: defaultdict[str, float] = defaultdict(float)  # time per stage, for benchmarks and logs

    @contextmanager
    def _timed(self, stage: str):
        start = time.perf_counter()
        yield
        self.seconds[stage] += time.perf_counter() - start

    def build(self, records: Sequence[ImageRecord]) -> tuple[list[tuple[SampleRecord, bytes]], list[Reject]]:
        samples: list[tuple[SampleRecord, bytes]] = []
        rejects: list[Reject] = []
        for start in range(0, len(records), CHUNK):
            chunk_samples, chunk_rejects = self._build_chunk(records[start:start + CHUNK])
            samples += chunk_samples
            rejects += chunk_rejects
        return samples, rejects

    def _reject(self, record: ImageRecord, stage: str, reason: RejectReason, detail: str = "") -> Reject:
        return Reject(image_id=record.image_id, file_name=record.file_name, stage=stage, reason=reason, detail=detail)

    def _load(self, records: Sequence[ImageRecord]) -> tuple[list[_Pending], list[Reject]]:
        pending, rejects = [], []
        for record in records:
            ranked, excluded = caption_stage.usable_captions(record.captions, self.config.captions.max_chars)
            if not record.captions:
                rejects.append(self._reject(record, "captions", RejectReason.NO_CAPTIONS))
                continue
            if not ranked:
                reasons = sorted({why for _, why in excluded})
                rejects.append(self._reject(record, "captions", RejectReason.NO_USABLE_CAPTION, "; ".join(reasons)))
                continue
            try:
                image = self._load_image(record)
            except ImageProblem as problem:
                rejects.append(self._reject(record, "image", problem.reason, problem.detail))
                continue
            if not record.width:  # a dataset source: the size is known once decoded
                record = replace(record, width=image.rgb.width, height=image.rgb.height)
            pending.append(_Pending(record, image, ranked, excluded))
        return pending, rejects

    def _load_image(self, record: ImageRecord) -> LoadedImage:
        source = self.config.source
        if source.dataset:
            from tokencompose.tasks.source.streams import open_dataset

            data = open_dataset(source).read_image(record.file_name)
            return decode_image(data, Path(record.file_name), self.config.output.image_field, self.config.images)
        assert source.images_dir is not None  # a COCO source (SourceConfig's validator)
        path = image_path(source.images_dir, record.file_name)
        return load_image(path, record.width, record.height, self.config.output.image_field, self.config.images)

    def _build_chunk(self, records: Sequence[ImageRecord]) -> tuple[list[tuple[SampleRecord, bytes]], list[Reject]]:
        with self._timed("images"):
            pending, rejects = self._load(records)
        if not pending:
            return [], rejects
        with self._timed("captions"):
            scores = self.backends.captions.score([p.image.rgb for p in pending],
                                                  [[c.text for c in p.ranked] for p in pending])
        chosen = [p.ranked[caption_stage.choose(s)] for p, s in zip(pending, scores)]
        with self._timed("nouns"):
            phrases = self.backends.nouns.extract([c.text for c in chosen])
        to_ground = [[ph for ph in image_phrases if not is_stop_listed(ph, self.stop_list)] for image_phrases in phrases]
        with self._timed("grounding"):
            # Grounders get the look-up form (no invisible characters); the sample keeps the caption's text.
            groundings = self.backends.grounding.ground([p.image.rgb for p in pending], [p.record for p in pending],
                                                        [[lookup_text(ph.text) for ph in g] for g in to_ground])
        samples = []
        for item, item_scores, caption, image_phrases, grounded_phrases, image_groundings in zip(
                pending, scores, chosen, phrases, to_ground, groundings):
            if not image_phrases:
                rejects.append(self._reject(item.record, "nouns", RejectReason.NO_NOUNS, caption.text))
                continue
            by_phrase = dict(zip(grounded_phrases, image_groundings))
            nouns = [self._noun(ph, by_phrase.get(ph)) for ph in image_phrases]
            if self.config.output.require_mask and not any(n.mask for n in nouns):
                reasons = ", ".join(f"{n.text}: {n.reason}" for n in nouns)
                rejects.append(self._reject(item.record, "grounding", RejectReason.NO_MASKS, reasons))
                continue
            samples.append((self._record(item, item_scores, caption, nouns), item.image.data))
        return samples, rejects

    @staticmethod
    def _noun(phrase: NounPhrase, grounding: Grounding | None) -> Noun:
        return Noun.grounded(phrase.text, (phrase.start, phrase.end), grounding or Grounding(reason=NounReason.STOP_LIST))

    def _record(self, item: _Pending, scores: list[float], caption: Caption, nouns: list[Noun]) -> SampleRecord:
        candidates = [CaptionCandidate(id=c.id, text=c.text, score=float(s)) for c, s in zip(item.ranked, scores)]
        candidates += [CaptionCandidate(id=c.id, text=c.text, score=None, excluded=why) for c, why in item.excluded]
        record = item.record
        return SampleRecord(key=sample_key(record.image_id), image_id=record.image_id, file_name=record.file_name,
                            width=record.width, height=record.height, image_field=self.config.output.image_field,
                            image_mode=item.image.mode, caption=caption.text, caption_id=caption.id,
                            candidates=candidates, nouns=nouns, provenance=self.provenance)


def shard_stats(records_in: int, samples: Sequence[SampleRecord]) -> ShardStats:
    stats = ShardStats(images_in=records_in, samples=len(samples))
    per_caption: Counter[str] = Counter()
    without_reason: Counter[str] = Counter()
    with_mask: Counter[str] = Counter()
    without_mask: Counter[str] = Counter()
    for sample in samples:
        per_caption[str(len(sample.nouns))] += 1
        for noun in sample.nouns:
            stats.nouns += 1
            text = noun.text.lower()
            if noun.mask is not None:
                stats.nouns_with_mask += 1
                with_mask[text] += 1
            else:
                without_reason[noun.reason or ""] += 1
                without_mask[text] += 1
    stats.nouns_per_caption = dict(sorted(per_caption.items(), key=lambda kv: int(kv[0])))
    stats.nouns_without_mask_by_reason = dict(sorted(without_reason.items()))
    stats.noun_texts_with_mask = dict(sorted(with_mask.items()))
    stats.noun_texts_without_mask = dict(sorted(without_mask.items()))
    return stats


def write_shard(out_dir: Path, index: int, samples: Sequence[tuple[SampleRecord, bytes]], image_field: str,
                rejects: Sequence[Reject] = (), stats: ShardStats | None = None) -> tuple[str, str, int]:
    """Write the tar (a temporary name unique to this run, then rename) and its index; returns
    (name, sha256, bytes). The hash and the member offsets are taken while the bytes go out: the
    finished tar is never read back. The index also holds the shard's rejects and stats, so that a
    later incremental build knows every image id the shard holds without rebuilding it."""
    name = shard_name(index)
    shard_path = out_dir / SHARDS_DIR / name
    shard_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = shard_path.with_name(temporary_name(name))
    digest, size, locations = write_tar(
        tmp, ((record.key, {image_field: image_bytes, JSON_FIELD: record.to_json_bytes()})
              for record, image_bytes in samples))
    shard_index = ShardIndex(shard=name, rejects=list(rejects), stats=stats, samples={
        key: {ext: MemberLocation(offset=offset, size=length) for ext, (offset, length) in members.items()}
        for key, members in locations.items()})
    try:
        write_atomic(out_dir / INDEX_DIR / name.replace(".tar", ".json"), canonical_json(shard_index.model_dump()))
        tmp.replace(shard_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return name, digest, size


def build_shard(config: BuildConfig, backends: Backends, provenance: Provenance, index: int,
                batch: Sequence[ImageRecord] | RowRange) -> ShardSummary:
    """The whole unit of work for one shard (called by the flow's task, or directly). A dataset source's
    row range is read here: the rows its source rejects come first among the shard's rejects."""
    records, rejects = _shard_input(config, batch)
    samples, build_rejects = ShardBuilder(config, backends, provenance).build(records)
    rejects += build_rejects
    stats = shard_stats(len(records), [s for s, _ in samples])
    name, digest, size = write_shard(config.output.out_dir, index, samples, config.output.image_field, rejects, stats)
    return ShardSummary(shard=name, sha256=digest, bytes=size, samples=len(samples), stats=stats, rejects=rejects,
                        provenance=provenance.model_dump(mode="json"))


def _shard_input(config: BuildConfig, batch: Sequence[ImageRecord] | RowRange
                 ) -> tuple[Sequence[ImageRecord], list[Reject]]:
    """A shard's image records, and the rejects its rows gave (a row range's rows read from the source)."""
    if not isinstance(batch, RowRange):
        return batch, []
    from tokencompose.tasks.source.streams import range_records

    return range_records(config, batch)
