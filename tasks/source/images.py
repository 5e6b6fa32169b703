"""Reading one image file: checks that turn a bad file into a reject reason instead of a crash."""
from __future__ import annotations

import io
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from tokencompose.schemas.config import ImageLimits
from tokencompose.schemas.reasons import RejectReason

# Modes that convert to RGB without losing meaning; 16/32-bit and float modes would be clipped.
CONVERTIBLE_MODES = frozenset({"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1", "La"})
FORMAT_FIELDS = {"JPEG": "jpg", "PNG": "png"}


class ImageProblem(Exception):
    """An image that cannot go into the dataset; ``reason`` is the rejects report's reason."""

    def __init__(self, reason: RejectReason, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class LoadedImage:
    data: bytes
    rgb: Image.Image
    mode: str


def image_path(images_dir: Path, file_name: str) -> Path:
    """The file a source's ``file_name`` names inside ``images_dir``. A name that leaves the folder
    (absolute, with '..', through a symlink pointing outside) or is no path at all (empty, NUL byte)
    raises ImageProblem(RejectReason.UNSAFE_FILE_NAME): the source must not make the build read other files."""
    if not file_name or "\x00" in file_name:
        raise ImageProblem(RejectReason.UNSAFE_FILE_NAME, f"{file_name!r:.120} is empty or holds a NUL byte")
    relative = PurePosixPath(file_name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ImageProblem(RejectReason.UNSAFE_FILE_NAME, f"{file_name!r:.120} points outside the image folder")
    path = images_dir / relative
    try:
        root, resolved = images_dir.resolve(), path.resolve()
    except (OSError, RuntimeError) as error:  # a symlink loop
        raise ImageProblem(RejectReason.UNSAFE_FILE_NAME, f"{file_name!r:.120}: {error}") from None
    if resolved == root or not resolved.is_relative_to(root):
        raise ImageProblem(RejectReason.UNSAFE_FILE_NAME, f"{file_name!r:.120} resolves outside the image folder")
    return path


def load_image(path: Path, width: int, height: int, image_field: str, limits: ImageLimits) -> LoadedImage:
    """Read, verify and decode an image whose COCO entry says ``width`` x ``height``."""
    check_dimensions(width, height, limits)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a folder, or a FIFO that would block the read
            raise ImageProblem(RejectReason.UNREADABLE_FILE, f"{path.name} is not a regular file")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageProblem(RejectReason.MISSING_FILE, str(path)) from None
    except OSError as error:
        raise ImageProblem(RejectReason.UNREADABLE_FILE, f"{path}: {error.strerror or error}") from None
    return decode_image(data, path, image_field, limits, (width, height))


def decode_image(data: bytes, path: Path, image_field: str, limits: ImageLimits,
                 size: tuple[int, int] | None = None) -> LoadedImage:
    """Verify and decode an image's bytes (``path`` names it in messages); ``size``: what the source
    says it is (None: a source that does not say, whose image then only has to fit the limits)."""
    if not data:
        raise ImageProblem(RejectReason.EMPTY_FILE, str(path))
    image = _decode(data, path, limits)
    field = FORMAT_FIELDS.get(image.format or "")
    if field != image_field:
        raise ImageProblem(RejectReason.FORMAT_MISMATCH, f"{image.format} file; this dataset stores {image_field}")
    if size is None:
        check_dimensions(image.width, image.height, limits)
    elif image.size != size:
        raise ImageProblem(RejectReason.SIZE_MISMATCH, f"file is {image.size[0]}x{image.size[1]}, COCO says {size[0]}x{size[1]}")
    if image.mode not in CONVERTIBLE_MODES:
        raise ImageProblem(RejectReason.UNSUPPORTED_MODE, f"mode {image.mode} does not convert to 8-bit RGB")
    mode = image.mode
    rgb = image.convert("RGB")
    return LoadedImage(data=data, rgb=rgb, mode=mode)


def check_dimensions(width: int, height: int, limits: ImageLimits) -> None:
    if width < limits.min_side or height < limits.min_side:
        raise ImageProblem(RejectReason.ABSURD_DIMENSIONS, f"{width}x{height} is below {limits.min_side} px a side")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise ImageProblem(RejectReason.ABSURD_DIMENSIONS, f"{width}x{height} exceeds {limits.max_side} px a side "
                                                f"or {limits.max_pixels} pixels")


def _decode(data: bytes, path: Path, limits: ImageLimits) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > limits.max_pixels:
                raise ImageProblem(RejectReason.ABSURD_DIMENSIONS, f"file is {image.width}x{image.height}")
            image.load()
    except ImageProblem:
        raise
    except UnidentifiedImageError:
        raise ImageProblem(RejectReason.NOT_AN_IMAGE, str(path)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageProblem(RejectReason.ABSURD_DIMENSIONS, str(error)) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageProblem(RejectReason.CORRUPT_IMAGE, f"{path.name}: {error}") from None
    return image
