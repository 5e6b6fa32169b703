"""FID through torch-fidelity with a random-weight Inception: our path (real statistics cached by content)
equals torch-fidelity's own end-to-end result on the same folders; the cache hits on the same content and
misses when an image or the weights change."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from tokencompose.tasks.evaluation.fid import FidInputError, InceptionFeatures, fid, list_images, real_statistics
from tokencompose.tasks.evaluation.toy import save_random_inception

SIZE = 48
LAYER = "64"


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    return save_random_inception(tmp_path_factory.mktemp("inception") / "inception-random.pth", seed=0)


@pytest.fixture(scope="module")
def extractor(inception_weights):
    # the first pooled layer: the same code path as the 2048-wide one FID uses, a fraction of the compute
    return InceptionFeatures(inception_weights, layer=LAYER, batch_size=4)


def write_images(folder, seed, count, sizes=((SIZE, SIZE),)):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        w, h = sizes[k % len(sizes)]
        base = rng.integers(0, 256, size=3)
        pixels = np.clip(base + rng.normal(0, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{k:03d}.png")
    return folder


def test_cached_path_equals_torch_fidelitys_own_result(tmp_path, inception_weights, extractor):
    import torch_fidelity

    real = write_images(tmp_path / "real", 0, 5, sizes=((64, 48), (48, 80)))
    generated = write_images(tmp_path / "gen", 1, 5)
    ours = fid(real, list_images(generated), extractor, tmp_path / "cache", resize=SIZE)
    theirs = torch_fidelity.calculate_metrics(
        input1=str(real), input2=str(generated), fid=True, cuda=False, batch_size=4, verbose=False, cache=False,
        save_cpu_ram=True, samples_resize_and_crop=SIZE, feature_layer_fid=LAYER, feature_extractor_weights_path=str(inception_weights))
    assert np.isfinite(ours["fid"]) and ours["fid"] > 0
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6)
    assert (ours["real_images"], ours["generated_images"], ours["real_cache_hit"]) == (5, 5, False)
    # generated images given as encoded bytes (as generation shards hold them) give the same value
    blobs = [p.read_bytes() for p in list_images(generated)]
    again = fid(real, blobs, extractor, tmp_path / "cache", resize=SIZE)
    assert again["real_cache_hit"] and again["fid"] == pytest.approx(ours["fid"], rel=1e-9)


def test_cache_hits_on_the_same_content_and_misses_on_a_change(tmp_path, inception_weights, extractor):
    real = write_images(tmp_path / "real", 2, 3)
    cache = tmp_path / "cache"
    first, hit = real_statistics(real, extractor, cache, resize=SIZE)
    assert not hit and len(list(cache.glob("fid-real-*.npz"))) == 1
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in list_images(real):          # same names and bytes elsewhere, newer times: still a hit
        (copy / p.name).write_bytes(p.read_bytes())
        os.utime(copy / p.name, (1, 1))
    second, hit = real_statistics(copy, extractor, cache, resize=SIZE)
    assert hit and np.array_equal(second.mu, first.mu) and np.array_equal(second.sigma, first.sigma)
    buffer = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (200, 10, 10)).save(buffer, format="PNG")
    (copy / "001.png").write_bytes(buffer.getvalue())
    changed, hit = real_statistics(copy, extractor, cache, resize=SIZE)
    assert not hit and not np.array_equal(changed.mu, first.mu)
    _, hit = real_statistics(real, extractor, cache, resize=SIZE + 8)
    assert not hit                       # another resize is another key
    assert len(list(cache.glob("fid-real-*.npz"))) == 3


def test_bad_inputs_are_named(tmp_path, inception_weights):
    with pytest.raises(FidInputError, match="does not exist"):
        list_images(tmp_path / "missing")
    write_images(tmp_path / "one", 0, 1)
    with pytest.raises(FidInputError, match="at least 2 images"):
        list_images(tmp_path / "one")
    with pytest.raises(FidInputError, match="no Inception weights"):
        InceptionFeatures(tmp_path / "none.pth")
    with pytest.raises(FidInputError, match="feature layer"):
        InceptionFeatures(inception_weights, layer="1000")
