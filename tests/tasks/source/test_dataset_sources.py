"""The dataset sources (hf, wds, folder) as streams of records and rejects, without models: order,
rejects with reasons, configuration problems in one line, start-up independent of the source's size."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from tests.support.dataset_sources import rows, write_folder, write_hf, write_source, write_wds
from tokencompose.schemas.config import BuildConfig, SourceConfig
from tokencompose.schemas.reasons import RejectReason
from tokencompose.schemas.records import ImageRecord
from tokencompose.schemas.reports import Reject
from tokencompose.tasks.source.coco_json import SourceError
from tokencompose.tasks.source.images import ImageProblem
from tokencompose.tasks.source.dataset_rows import RowRange
from tokencompose.tasks.source.streams import (dataset_problems, dataset_records, open_dataset, range_records,
                                               row_count, script_problem)


def _records(dataset: str, **columns) -> list[ImageRecord | Reject]:
    source = open_dataset(SourceConfig(dataset=dataset, **columns))
    source.check()
    return list(dataset_records(source))


@pytest.fixture
def hostile_rows() -> list[dict]:
    items = rows(6)
    items[1]["image"] = None                         # a row without image
    items[2]["caption"] = ["Кошка сидит на столе"]    # another script
    items[3]["caption"] = []                          # no caption
    items[4]["url"] = items[0]["url"]                 # a URL seen before
    items[5]["image"] = b"\xff\xd8 not a jpeg"        # bytes that do not decode
    return items


@pytest.mark.parametrize("kind", ["hf", "wds", "folder"])
def test_rows_come_in_order_with_their_rejects(tmp_path, hostile_rows, kind):
    dataset = write_source(kind, tmp_path, hostile_rows, per_tar=2)
    first, second = _records(dataset), _records(dataset)
    assert first == second
    assert [item.image_id for item in first] == list(range(6))
    rejects = {item.image_id: item for item in first if isinstance(item, Reject)}
    assert {i: r.reason for i, r in rejects.items()} == {1: RejectReason.NO_IMAGE, 4: RejectReason.DUPLICATE_URL}
    assert all(dataset.split(":", 1)[1] in r.detail and f"row {i}" in r.detail
               for i, r in rejects.items())
    records = {item.image_id: item for item in first if isinstance(item, ImageRecord)}
    assert [c.text for c in records[0].captions] == hostile_rows[0]["caption"]
    assert records[2].captions[0].problem.startswith("not in the Latin script (mostly cyrillic)")
    assert records[3].captions == ()  # the caption stage rejects it: no_captions
    source = open_dataset(SourceConfig(dataset=dataset))
    assert source.read_image(records[0].file_name) == hostile_rows[0]["image"]
    assert source.read_image(records[5].file_name) == hostile_rows[5]["image"]  # decoding rejects it later


@pytest.mark.parametrize("kind", ["hf", "wds", "folder"])
def test_a_row_range_reads_its_own_rows_as_the_whole_stream_gives_them(tmp_path, hostile_rows, kind):
    dataset = write_source(kind, tmp_path, hostile_rows + rows(3, start=6), per_tar=2)
    config = BuildConfig.model_validate({"source": {"dataset": dataset}, "output": {"out_dir": str(tmp_path / "o")}})
    whole = _records(dataset)
    assert row_count(open_dataset(config.source)) == len(whole) == 9
    for start, stop in ((0, 4), (5, 9), (7, 20), (9, 9)):
        records, rejects = range_records(config, RowRange(start, stop))
        expected = whole[start:stop]
        assert records == [r for r in expected if isinstance(r, ImageRecord)]
        assert rejects == [r for r in expected if isinstance(r, Reject)]
    # Duplicates are found among a range's rows: row 4 repeats row 0's URL, which a range from 3 does not hold.
    records, rejects = range_records(config, RowRange(3, 6))
    assert [r.image_id for r in records] == [3, 4, 5] and rejects == []
    assert range_records(config, RowRange(0, 6))[1][-1].reason == RejectReason.DUPLICATE_URL


def test_duplicate_keys_are_rejected_and_the_first_kept(tmp_path):
    items = rows(3)
    items[2]["key"] = items[0]["key"]
    dataset = f"hf:{write_hf(tmp_path / 'hf', items)}"
    found = _records(dataset, key_column="key")
    assert isinstance(found[0], ImageRecord) and isinstance(found[1], ImageRecord)
    assert found[2].reason == RejectReason.DUPLICATE_KEY and "'000000000'" in found[2].detail


def test_a_single_caption_column_and_a_malformed_captions_line(tmp_path):
    hf = f"hf:{write_hf(tmp_path / 'hf', rows(2), single_caption=True)}"
    assert [r.captions[0].text for r in _records(hf)] == ["A man riding a horse on a beach.",
                                                          "A cat sitting on a table next to a cup."]
    folder = write_folder(tmp_path / "folder", rows(1), lines=["[1, 2]", '{"image": "", "caption": "a dog"}'])
    found = _records(f"folder:{folder}")
    assert [getattr(r, "reason", None) for r in found] == [None, RejectReason.NO_IMAGE, RejectReason.NO_IMAGE]
    assert "line 2 is not a JSON object" in found[1].detail


def test_a_csv_captions_file(tmp_path):
    (tmp_path / "a.jpg").write_bytes(rows(1)[0]["image"])
    (tmp_path / "captions.csv").write_text("file,text\na.jpg,A dog on a bed.\n,A cat.\nb.jpg,\n", encoding="utf-8")
    found = _records(f"folder:{tmp_path}", image_column="file", caption_column="text")
    assert found[0].file_name == "a.jpg" and found[0].captions[0].text == "A dog on a bed."
    assert found[1].reason == RejectReason.NO_IMAGE
    assert found[2].captions == ()
    with pytest.raises(ImageProblem) as problem:
        open_dataset(SourceConfig(dataset=f"folder:{tmp_path}", image_column="file", caption_column="text")
                     ).read_image("../outside.jpg")
    assert problem.value.reason == RejectReason.UNSAFE_FILE_NAME


@pytest.mark.parametrize("kind", ["hf", "folder"])
def test_a_missing_column_stops_before_work(tmp_path, kind):
    dataset = write_source(kind, tmp_path, rows(2), per_tar=2)
    with pytest.raises(SourceError) as error:
        _records(dataset, caption_column="text")
    message = str(error.value)
    assert "\n" not in message and "'text'" in message and "caption" in message


def test_configuration_problems_are_one_line_each(tmp_path):
    dataset = write_source("wds", tmp_path, rows(2), per_tar=2)
    config = BuildConfig.model_validate({"source": {"dataset": dataset}, "output": {"out_dir": str(tmp_path / "o")}})
    problems = dataset_problems(config)
    assert problems == ["source.dataset: profile 'offline' masks nouns with 'coco', which needs human annotations a "
                        "wds source does not have: use --profile paper (Grounded-SAM masks)"]
    missing = BuildConfig.model_validate({"source": {"dataset": "wds:" + str(tmp_path / "none-{0..1}.tar")},
                                          "output": {"out_dir": str(tmp_path / "o")}, "profile": "paper"})
    assert dataset_problems(missing) == [f"source.dataset: wds shards {tmp_path}/none-{{0..1}}.tar: "
                                         f"{tmp_path}/none-0.tar does not exist"]
    with pytest.raises(ValidationError, match="must be hf:NAME"):
        SourceConfig(dataset="s3:bucket")
    with pytest.raises(ValidationError, match="drop source.images_dir"):
        SourceConfig(dataset="hf:x", images_dir=tmp_path)
    with pytest.raises(ValidationError, match="give source.images_dir and source.captions_json"):
        SourceConfig()


def test_a_hub_dataset_not_in_the_cache_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SourceError) as error:
        _records("hf:nobody-here/no-such-dataset-24#train")
    assert str(error.value).startswith("hub dataset 'nobody-here/no-such-dataset-24' is not in the Hugging Face "
                                       "cache and the hub is offline")
    assert "\n" not in str(error.value)
    with pytest.raises(SourceError, match="does not exist"):
        _records(f"hf:{tmp_path}/absent")


def test_a_dataset_dict_needs_a_split(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"image": [None], "caption": ["a dog"]})}
                         ).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(SourceError, match="has the splits train: name one, e.g. hf:.*#train"):
        _records(f"hf:{tmp_path / 'dd'}")
    assert [r.reason for r in _records(f"hf:{tmp_path / 'dd'}#train")] == [RejectReason.NO_IMAGE]


def test_script_problem():
    assert script_problem("A café in Zürich.") is None
    assert script_problem("一只猫坐在桌子上") .startswith("not in the Latin script (mostly cjk)")
    assert script_problem("A cat and a dog, кошка") is None  # mostly Latin
    assert script_problem("2024") is None


class RowCounter:
    """A dataset source that counts the rows it gives and refuses to be streamed whole."""

    def __init__(self, source, read: list[int]):
        self._source, self._read = source, read

    def __getattr__(self, name):
        return getattr(self._source, name)

    def rows(self):
        raise AssertionError(f"{self._source.description} was streamed whole")

    def rows_between(self, start: int, stop: int):
        for row in self._source.rows_between(start, stop):
            self._read.append(row.position)
            yield row


@pytest.mark.parametrize("kind", ["hf", "folder", "wds"])
def test_a_plan_reads_no_row_and_its_last_shard_only_its_own(tmp_path, monkeypatch, kind):
    """Start-up does not grow with the source: the plan takes the row count without reading a row, and a
    shard turns only its own rows into records (the seconds this takes at 1M and 10M rows are measured by
    bench/bench_plan_startup.py, docs/scale-out.md)."""
    from tokencompose.tasks.shards.planning import row_range_plan
    from tokencompose.tasks.source import streams

    count, shard = 3_000, 500
    if kind == "hf":
        import datasets
        import pyarrow as pa

        table = pa.table({"image": pa.array([None] * count, pa.binary()), "caption": ["a dog"] * count})
        datasets.Dataset(table).save_to_disk(str(tmp_path / "hf"))
        dataset = f"hf:{tmp_path}/hf"
    elif kind == "folder":
        (tmp_path / "folder").mkdir()
        (tmp_path / "folder" / "captions.jsonl").write_text(
            "".join(json.dumps({"image": f"{i}.jpg", "caption": "a dog"}) + "\n" for i in range(count)))
        dataset = f"folder:{tmp_path}/folder"
    else:
        count, shard = 30, 5
        write_wds(tmp_path / "wds", rows(count), per_tar=shard)
        dataset = f"wds:{tmp_path}/wds/*.tar"
    read: list[int] = []
    opened = streams.open_dataset
    monkeypatch.setattr(streams, "open_dataset", lambda config: RowCounter(opened(config), read))
    config = BuildConfig.model_validate({"source": {"dataset": dataset},
                                         "output": {"out_dir": str(tmp_path / "out"), "shard_size": shard}})
    run_plan = row_range_plan(config, config.config_hash())
    assert read == [] and run_plan.seen == count and len(run_plan.batches) == count // shard
    range_records(config, run_plan.batches[-1])
    assert read == list(range(count - shard, count)), "the last shard reads its own rows, no other"


FAILED = [{"key": "000000001", "url": "https://example.org/gone.jpg", "status": "failed_to_download",
           "error_message": "HTTP Error 404: Not Found"},
          {"key": "000000003", "url": "https://example.org/huge.jpg", "status": "failed_to_resize",
           "error_message": "image too large"}]


def _img2dataset_shards(folder, per_tar: int = 2) -> str:
    """Three successful rows in two tars, and img2dataset's two failures listed in the last tar's parquet."""
    write_wds(folder, rows(3), per_tar=per_tar, failed=FAILED)
    return f"wds:{folder}/*.tar"


def test_img2dataset_failures_are_rejects_with_its_status_and_message(tmp_path, monkeypatch):
    from tokencompose.tasks.source import webdataset_source

    dataset = _img2dataset_shards(tmp_path / "wds")
    found = _records(dataset)
    assert [type(item).__name__ for item in found] == ["ImageRecord"] * 3 + ["Reject"] * 2
    assert [item.image_id for item in found] == list(range(5))  # after the last tar's own samples
    gone, huge = found[3:]
    assert (gone.reason, gone.file_name) == (RejectReason.DOWNLOAD_FAILED, "00001.parquet/000000001")
    assert gone.detail.endswith("row 3: img2dataset failed_to_download: HTTP Error 404: Not Found "
                                "(url https://example.org/gone.jpg)")
    assert (huge.reason, huge.file_name) == (RejectReason.DOWNLOAD_FAILED, "00001.parquet/000000003")
    assert "img2dataset failed_to_resize: image too large" in huge.detail
    # streamed in record batches: batches of one row give the same rows
    monkeypatch.setattr(webdataset_source, "PARQUET_BATCH_ROWS", 1)
    assert _records(dataset) == found


def test_a_tar_without_its_parquet_is_plain_webdataset(tmp_path):
    dataset = _img2dataset_shards(tmp_path / "wds")
    (tmp_path / "wds" / "00001.parquet").unlink()
    assert [getattr(item, "reason", None) for item in _records(dataset)] == [None, None, None]


@pytest.mark.parametrize("damage", ["garbage", "no_status_column", "damaged_data"])
def test_an_unusable_parquet_stops_before_work_naming_it(tmp_path, damage):
    import pyarrow as pa
    import pyarrow.parquet as pq

    dataset = _img2dataset_shards(tmp_path / "wds")
    parquet = tmp_path / "wds" / "00000.parquet"
    if damage == "garbage":
        parquet.write_bytes(b"PAR1 not a parquet")
    elif damage == "no_status_column":
        pq.write_table(pa.table({"key": ["000000000"], "error_message": [None]}, schema=pa.schema(
            [("key", pa.string()), ("error_message", pa.string())])), parquet)
    else:  # the footer is intact, a data page is not
        data = bytearray(parquet.read_bytes())
        data[4:40] = b"\xff" * 36
        parquet.write_bytes(bytes(data))
    config = BuildConfig.model_validate({"source": {"dataset": dataset}, "output": {"out_dir": str(tmp_path / "o")},
                                         "profile": "paper"})
    with pytest.raises(SourceError) as error:
        list(dataset_records(open_dataset(config.source)))
    message = str(error.value)
    assert f"wds shards {tmp_path}/wds/*.tar: {parquet} " in message and "\n" not in message
    if damage == "no_status_column":
        assert "has no column status (img2dataset's parquet has key, status, error_message)" in message
    if damage != "damaged_data":  # the schema is read at preflight; a damaged page only when listed
        (problem,) = dataset_problems(config)
        assert problem == f"source.dataset: {message}"


def test_img2dataset_rows_are_counted_from_the_parquets_and_ranges_skip_earlier_tars(tmp_path):
    """The tars a count or a range does not need are never opened: here they are replaced by bytes that are no
    tar at all, after the whole stream was read from the intact ones."""
    dataset = _img2dataset_shards(tmp_path / "wds")
    config = BuildConfig.model_validate({"source": {"dataset": dataset}, "output": {"out_dir": str(tmp_path / "o")}})
    whole = _records(dataset)
    intact = {name: (tmp_path / "wds" / name).read_bytes() for name in ("00000.tar", "00001.tar")}

    def only(*readable: str) -> None:
        from tokencompose.tasks.source.streams import _open

        _open.cache_clear()  # a new source object: no row count kept from before
        for name, data in intact.items():
            (tmp_path / "wds" / name).write_bytes(data if name in readable else b"not a tar")

    only()
    assert row_count(open_dataset(config.source)) == len(whole) == 5, "counted without opening a tar"
    for (start, stop), readable in {(0, 2): ["00000.tar"], (2, 5): ["00001.tar"], (3, 4): ["00001.tar"],
                                    (1, 3): ["00000.tar", "00001.tar"]}.items():
        only(*readable)
        records, rejects = range_records(config, RowRange(start, stop))
        assert records + rejects == sorted(whole[start:stop], key=lambda r: isinstance(r, Reject))


def test_a_tar_that_disagrees_with_its_parquet_is_named(tmp_path):
    import pyarrow.parquet as pq

    dataset = _img2dataset_shards(tmp_path / "wds")
    parquet = tmp_path / "wds" / "00000.parquet"
    table = pq.read_table(parquet)
    pq.write_table(table.slice(0, 1), parquet)  # lists one of the tar's two samples
    with pytest.raises(SourceError, match=r"00000\.tar and 00000\.parquet disagree: the tar holds 2 samples, "
                                          r"the parquet lists 1 successes"):
        _records(dataset)
