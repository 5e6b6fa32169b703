
import numpy as np
import pytest
from PIL import Image

from tests.support.testkit import jpeg_bytes, png_bytes
from tokencompose.schemas.config import ImageLimits
from tokencompose.tasks.source.images import ImageProblem, load_image

LIMITS = ImageLimits()


def _load(tmp_path, data, width=64, height=48, field="jpg", limits=LIMITS):
    path = tmp_path / "image"
    if data is not None:
        path.write_bytes(data)
    return load_image(path, width, height, field, limits)


def _reason(tmp_path, data, **kwargs):
    with pytest.raises(ImageProblem) as problem:
        _load(tmp_path, data, **kwargs)
    return problem.value.reason


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_jpeg_modes_are_kept_as_original_bytes(tmp_path, mode):
    data = jpeg_bytes(mode=mode)
    loaded = _load(tmp_path, data)
    assert loaded.data == data and loaded.mode == mode and loaded.rgb.mode == "RGB"


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA"])
def test_png_modes_in_a_png_dataset(tmp_path, mode):
    image = Image.fromarray(np.zeros((48, 64, 3), np.uint8)).convert(mode)
    assert _load(tmp_path, png_bytes(image), field="png").mode == mode


def test_sixteen_bit_images_are_rejected(tmp_path):
    image = Image.fromarray(np.full((48, 64), 40000, np.uint16))
    assert image.mode.startswith("I;16")
    assert _reason(tmp_path, png_bytes(image), field="png") == "unsupported_mode"


def test_png_in_a_jpg_dataset_is_a_format_mismatch(tmp_path):
    image = Image.fromarray(np.zeros((48, 64, 3), np.uint8))
    assert _reason(tmp_path, png_bytes(image)) == "format_mismatch"


def test_bad_files(tmp_path):
    good = jpeg_bytes()
    assert _reason(tmp_path, None) == "missing_file"
    assert _reason(tmp_path, b"") == "empty_file"
    assert _reason(tmp_path, b"this is not an image at all") == "not_an_image"
    assert _reason(tmp_path, good[: len(good) // 2]) == "corrupt_image"
    assert _reason(tmp_path, good, width=65) == "size_mismatch"


def test_absurd_dimensions_are_rejected_before_reading(tmp_path):
    assert _reason(tmp_path, None, width=0, height=10) == "absurd_dimensions"
    assert _reason(tmp_path, None, width=10**6, height=10**6) == "absurd_dimensions"
    limits = ImageLimits(max_pixels=1000)
    assert _reason(tmp_path, jpeg_bytes(), width=20, height=20, limits=limits) == "absurd_dimensions"
