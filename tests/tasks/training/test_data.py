"""Shards -> batches: geometry, token positions, skipped nouns, determinism and resumable skipping."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from transformers import CLIPTokenizerFast

from tokencompose.tasks.shards.patterns import expand_shards
from tokencompose.tasks.training.data import (DataError, Preprocessor, ShardStream, center_crop_box, collate, make_loader,
                                        resize_mask, transform_mask)
from tokencompose.tasks.training.samples import SampleProblem
from tokencompose.tasks.training.toy import box_mask, make_record
from tests.support.training_kit import photo_samples, write_shards


@pytest.fixture(scope="module")
def tokenizer(tiny_sd):
    return CLIPTokenizerFast.from_pretrained(tiny_sd / "tokenizer")


@pytest.fixture
def preprocess(tokenizer):
    return Preprocessor(tokenizer, resolution=64, mask_resolutions=(4, 8, 16))


def test_mask_follows_the_image_geometry():
    size, box = center_crop_box(600, 400, 64)           # landscape: short side 400 -> 64
    assert size == (96, 64) and box == (16, 0, 80, 64)
    mask = box_mask(400, 600, 0.0, 0.0, 0.5, 1.0)       # left half of the original
    cropped = transform_mask(mask, 64)
    # the left half (0..48 after resizing) minus the 16 cropped columns: columns 0..31 of the crop
    assert cropped[:, :31].all() and not cropped[:, 33:].any()


def test_masks_resize_bilinear_without_antialias_then_positive():
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 34:36, 34:36] = True                          # 2x2 pixels; 8x8 output pixel 4 samples 35.5
    small = resize_mask(mask, 8)
    assert small.sum() == 1 and small[0, 4, 4] == 1       # a quarter weight is enough: "> 0"
    mask[0, 34:36, 34:36] = False
    mask[0, 30:33, 30:33] = True                          # between sample points: missed without antialias
    assert resize_mask(mask, 8).sum() == 0
    assert resize_mask(mask, 8, antialias=True).sum() >= 4  # today's torchvision default dilates instead


# COCO-like (width, height): landscape, portrait, a long side that truncates (640x427 -> 767.4) and
# crops at a half pixel (round half to even), square, odd sizes
COCO_SIZES = [(640, 480), (480, 640), (640, 427), (500, 375), (612, 612), (427, 640), (333, 501), (501, 333)]


def reference_image(image, resolution):
    """The authors' image transform, through torchvision itself."""
    from torchvision import transforms
    return transforms.Compose([transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
                               transforms.CenterCrop(resolution), transforms.ToTensor(),
                               transforms.Normalize([0.5], [0.5])])(image.convert("RGB"))


def reference_masks(mask, resolution, sizes, antialias):
    """The authors' mask transform through torchvision: tensor Resize + CenterCrop of the 0/1 mask (kept
    fractional), then per attention resolution a bilinear Resize and ``> 0``."""
    from torchvision import transforms
    bilinear = transforms.InterpolationMode.BILINEAR
    tensor = torch.from_numpy(mask).float()[None]
    crop = transforms.CenterCrop(resolution)(transforms.Resize(resolution, bilinear, antialias=antialias)(tensor))
    return {r: (transforms.Resize(r, bilinear, antialias=antialias)(crop)[0] > 0).float() for r in sizes}


def random_photo_and_masks(width, height, seed):
    """A noisy RGB image and masks of every scale: a thin line, a few-pixel blob, boxes, a disc."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    masks = []
    thin = np.zeros((height, width), dtype=bool)
    thin[:, width // 3] = True                                   # one pixel wide: vanishes if thresholded
    masks.append(thin)
    blob = np.zeros((height, width), dtype=bool)
    y, x = rng.integers(0, height - 3), rng.integers(0, width - 3)
    blob[y:y + 3, x:x + 3] = True
    masks.append(blob)
    for _ in range(2):
        x0, x1 = np.sort(rng.integers(0, width, 2))
        y0, y1 = np.sort(rng.integers(0, height, 2))
        box = np.zeros((height, width), dtype=bool)
        box[y0:y1 + 1, x0:x1 + 1] = True
        masks.append(box)
    yy, xx = np.mgrid[:height, :width]
    masks.append((yy - height * 0.4) ** 2 + (xx - width * 0.6) ** 2 < (min(width, height) * 0.3) ** 2)
    return image, masks


@pytest.mark.parametrize("antialias", [False, True], ids=["torchvision-0.14", "antialias"])
@pytest.mark.parametrize("width,height", COCO_SIZES)
def test_geometry_equals_torchvision_resize_and_center_crop(width, height, antialias):
    """Image and per-resolution masks equal the authors' torchvision pipeline exactly at R = 512."""
    from PIL import Image
    from tokencompose.tasks.training.data import resize_mask, transform_image
    resolution, sizes = 512, (8, 16, 32, 64)
    array, masks = random_photo_and_masks(width, height, seed=width * 1000 + height)
    image = Image.fromarray(array)
    # PIL does the resize in both: the same call on the same image gives the same bytes
    assert torch.equal(transform_image(image, resolution), reference_image(image, resolution))
    ours = transform_mask(np.stack(masks), resolution, antialias)
    assert ours.shape == (len(masks), resolution, resolution) and ours.dtype == torch.float32
    for index, mask in enumerate(masks):
        expected = reference_masks(mask, resolution, sizes, antialias)
        for r in sizes:
            got = resize_mask(ours[index], r, antialias)
            assert torch.equal(got, expected[r]), (index, r, (got != expected[r]).sum().item())


def test_resize_truncates_the_long_side_and_crops_half_pixels_to_even():
    from tokencompose.tasks.training.data import resized_size
    assert resized_size(640, 480, 512) == (682, 512)      # 682.67 truncated, not rounded to 683
    assert resized_size(480, 640, 512) == (512, 682)
    assert center_crop_box(640, 427, 512) == ((767, 512), (128, 0, 640, 512))   # (767 - 512) / 2 = 127.5 -> 128
    assert center_crop_box(612, 612, 512) == ((512, 512), (0, 0, 512, 512))


def test_the_512_mask_keeps_fractional_edges():
    """One-pixel lines of a 1280x960 mask (shrunk 0.53x to 512): some fall between the bilinear
    sample points and have only fractional values below 0.5 at 512. Thresholding there drops such a
    line; the authors' pipeline keeps the fractions and ``> 0`` at 64x64 finds it. Thresholding
    first never adds a pixel (it only shrinks masks)."""
    kept_only_by_fractions = 0
    for column in range(600, 640):
        mask = np.zeros((960, 1280), dtype=bool)
        mask[:, column] = True
        at_512 = transform_mask(mask, 512)
        fractional, thresholded = resize_mask(at_512, 64), resize_mask(at_512 >= 0.5, 64)
        assert (thresholded <= fractional).all()
        kept_only_by_fractions += int(fractional.sum() > 0 and thresholded.sum() == 0)
    assert kept_only_by_fractions > 0


def test_every_sub_word_token_of_a_noun_is_used(preprocess, tokenizer):
    image = np.zeros((80, 120, 3), dtype=np.uint8)
    caption = "two giraffes beside a teddy bear"
    record, _ = make_record(7, image, caption, [("giraffes", box_mask(80, 120, 0, 0, 0.5, 1)),
                                                ("teddy bear", box_mask(80, 120, 0.5, 0, 1, 1))])
    from PIL import Image
    example = preprocess.from_record(record, Image.fromarray(image))
    tokens = tokenizer.convert_ids_to_tokens(example.input_ids.tolist())
    giraffes, teddy_bear = example.noun_tokens
    assert "".join(tokens[i] for i in giraffes).replace("</w>", "") == "giraffes" and len(giraffes) == 2
    assert [tokens[i] for i in teddy_bear] == ["teddy</w>", "bear</w>"]
    assert set(example.masks) == {4, 8, 16} and example.masks[16].shape == (2, 16, 16)


def test_nouns_without_mask_or_past_the_token_window_are_skipped_and_counted(preprocess):
    from PIL import Image
    samples = {record.key: (record, data) for record, data in photo_samples()}
    import io
    counts = {}
    for key, (record, data) in samples.items():
        example = preprocess.from_record(record, Image.open(io.BytesIO(data)))
        counts[record.image_id] = example.stats
        assert len(example.noun_tokens) == example.stats["nouns_used"]
    assert counts[2]["nouns_no_mask"] == 1 and counts[2]["nouns_used"] == 2       # "flag" has no mask
    assert counts[4]["nouns_no_token"] == 1 and counts[4]["nouns_used"] == 1      # "tower" is past 77 tokens
    assert counts[1]["relations"] == 1                                           # cat left of cup


def test_collate_pads_nouns_tokens_and_relations(preprocess, shard_dir):
    loader = make_loader(expand_shards([str(shard_dir / "*.tar")]), preprocess, batch_size=4, num_workers=0,
                         seed=0, shuffle_buffer=0)
    batch = next(iter(loader))
    assert batch.pixel_values.shape == (4, 3, 64, 64) and batch.input_ids.shape == (4, 77)
    n = batch.noun_valid.sum(1).tolist()
    assert sorted(n) == [1, 2, 2, 3]
    assert batch.slot_noun.shape[1] == 3 and batch.token_index.shape == batch.slot_noun.shape[::2]
    # padded slots belong to no noun, padded nouns have empty masks
    assert torch.equal(batch.slot_noun.sum(1) > 0, batch.slot_noun.sum(1) == 1) and batch.masks[8][~batch.noun_valid].sum() == 0
    assert batch.stats["samples"] == 4 and batch.stats["nouns_no_token"] == 1 and batch.stats["nouns_no_mask"] == 1


def keys(stream, count):
    return [e.key for e in itertools.islice(iter(stream), count)]


def test_stream_is_endless_deterministic_and_skips_exactly(preprocess, shard_dir):
    urls = expand_shards([str(shard_dir / "*.tar")])
    first = keys(ShardStream(urls, preprocess, seed=3, shuffle_buffer=3), 12)
    assert first == keys(ShardStream(urls, preprocess, seed=3, shuffle_buffer=3), 12)
    assert sorted(first[:4]) == sorted(first[4:8]) == sorted({k for k in first})  # epochs cover every sample
    assert keys(ShardStream(urls, preprocess, seed=3, shuffle_buffer=3, skip_batches=5), 7) == first[5:]


def test_loader_with_workers_resumes_where_it_stopped(preprocess, shard_dir):
    urls = expand_shards([str(shard_dir / "*.tar")])
    run = lambda skip, n: [b.keys for b in itertools.islice(iter(make_loader(  # noqa: E731
        urls, preprocess, batch_size=1, num_workers=2, seed=1, shuffle_buffer=2, skip_batches=skip)), n)]
    assert run(0, 9)[5:] == run(5, 4)


def test_sample_level_split_over_ranks(preprocess, shard_dir):
    urls = expand_shards([str(shard_dir / "*.tar")])[:1]          # one shard, two ranks
    rank0 = keys(ShardStream(urls, preprocess, shuffle_buffer=0, rank=0, world_size=2), 2)
    rank1 = keys(ShardStream(urls, preprocess, shuffle_buffer=0, rank=1, world_size=2), 2)
    assert rank0[0] != rank1[0] and rank0[0] == rank0[1]


def test_a_damaged_sample_raises_its_reason_for_the_stream_to_skip(preprocess):
    with pytest.raises(SampleProblem) as caught:
        preprocess({"__key__": "x", "__url__": "shard.tar", "json": b"{not json", "jpg": b""})
    assert caught.value.reason == "json_invalid" and isinstance(caught.value, DataError)


def test_a_slow_tokenizer_is_refused(tiny_sd):
    from transformers import CLIPTokenizer
    with pytest.raises(TypeError, match="fast tokenizer"):
        Preprocessor(CLIPTokenizer.from_pretrained(tiny_sd / "tokenizer"), 64, (8,))


def test_shards_written_in_a_test_round_trip(tmp_path, preprocess):
    samples = photo_samples()[:1]
    shards = write_shards(tmp_path, samples, per_shard=1)
    batch = collate([next(iter(ShardStream([str(p) for p in shards.glob("*.tar")], preprocess, shuffle_buffer=0)))])
    assert batch.keys == [samples[0][0].key]
