"""The dataset card lets Hugging Face `datasets` (what its viewer runs) load the output folder."""
import io

import datasets  # type: ignore[import-untyped]
from PIL import Image

from tokencompose.schemas.dataset_card import dataset_card
from tokencompose.schemas.sample import SampleRecord, sample_key
from tokencompose.tasks.shards.dataset import build_directly
from tokencompose.tasks.shards.build import write_shard


def _load(folder, tmp_path):
    return datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "hf-cache"))


def test_the_output_folder_loads_with_datasets(make_demo_config, tmp_path):
    config = make_demo_config()
    build_directly(config)
    rows = _load(config.output.out_dir, tmp_path)
    assert len(rows) == 8
    row = next(r for r in rows if r["__key__"] == "000000000632")
    assert isinstance(row["jpg"], Image.Image) and row["jpg"].size == (600, 400)
    assert [n["text"] for n in row["json"]["nouns"]] == ["cup", "coffee", "saucer", "spoon"]
    assert row["json"]["caption"][2:5] == "cup"


def test_values_that_appear_only_after_the_first_samples_still_load(make_demo_config, tmp_path):
    """`datasets` guesses types from the first 5 samples; a detector score that is null there and a
    number later loads only because the card declares it."""
    config = make_demo_config()
    build_directly(config)
    first = next(iter(datasets.load_dataset("webdataset", data_files=[str(p) for p in
                                            sorted((config.output.out_dir / "shards").glob("*.tar"))],
                                            split="train", cache_dir=str(tmp_path / "c1"))))
    template = SampleRecord.model_validate(first["json"])
    records = []
    for i in range(8):
        nouns = [n.model_copy(update={"score": 0.5, "box_scores": [0.5]}) if i >= 6 and n.mask else n
                 for n in template.nouns]
        records.append((template.model_copy(update={"key": sample_key(i + 1), "image_id": i + 1, "nouns": nouns}),
                        _jpeg(template.width, template.height)))
    out = tmp_path / "late-scores"
    write_shard(out, 0, records, "jpg")
    (out / "README.md").write_bytes(dataset_card("jpg", template.provenance.model_dump(mode="json"), 8, []))
    rows = _load(out, tmp_path)
    scores = [[n["score"] for n in row["json"]["nouns"] if n["mask"]] for row in rows]
    assert scores[0][0] is None and scores[7][0] == 0.5


def _jpeg(width, height):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()
