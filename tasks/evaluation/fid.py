"""FID (Heusel et al.) of generated images against a folder of real ones, through torch-fidelity.

Why torch-fidelity: it is the PyTorch port of the TensorFlow Inception graph the original FID was defined
with (its weights file ``weights-inception-2015-12-05-6726825d.pth``, its TF-1.x-compatible bilinear
resize), validated against the TF reference by its authors, and torchmetrics' FID wraps the same network.
It reads the weights from a local file (``feature_extractor_weights_path``), so nothing is downloaded,
and it exposes the three steps (features -> mean and covariance -> distance) separately, which lets the
real images' statistics be computed once and cached. clean-fid fetches its own Inception from a URL and
caches statistics by a name the user picks rather than by content.

Images are read as torch-fidelity reads a folder (RGB, uint8), optionally resized on the short side and
centre-cropped to ``resize`` pixels (its ``samples_resize_and_crop``), which COCO's and Flickr30K's
images of mixed sizes need to be batched. The real statistics are cached in ``cache_dir`` under a key
that hashes every file's name (relative to the folder) and bytes, the weights file's bytes, the
feature layer and the resize: the same content hits, any changed image, weight or setting misses.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_LAYER = "2048"
CACHE_FORMAT = 1


class FidInputError(ValueError):
    """A real-image folder or weights file that cannot be used; the message names it."""


@dataclass(frozen=True)
class Statistics:
    mu: np.ndarray
    sigma: np.ndarray
    count: int

    def as_fidelity(self) -> dict:
        return {"mu": self.mu, "sigma": self.sigma}


def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FidInputError(f"{folder}: the real-image folder does not exist")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise FidInputError(f"{folder}: FID needs at least 2 images, found {len(files)}")
    return files


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_key(folder: Path, files: Sequence[Path], weights: Path, layer: str, resize: int | None) -> str:
    """sha256 of the cache format, layer, resize, weights file and every (relative name, bytes) pair."""
    digest = hashlib.sha256(f"fid-real v{CACHE_FORMAT} layer={layer} resize={resize}\n".encode())
    digest.update(f"weights {file_digest(weights)}\n".encode())
    for path in files:
        digest.update(f"{Path(path).relative_to(folder).as_posix()} {file_digest(path)}\n".encode())
    return digest.hexdigest()


def image_transform(resize: int | None):
    """torch-fidelity's folder transform: optional Resize(short side) + CenterCrop, then a uint8 CHW tensor."""
    import torchvision
    from torch_fidelity.datasets import TransformPILtoRGBTensor

    steps: list = []
    if resize:
        steps += [torchvision.transforms.Resize(resize), torchvision.transforms.CenterCrop(resize)]
    steps.append(TransformPILtoRGBTensor())
    return torchvision.transforms.Compose(steps)


def bytes_dataset(blobs: Sequence[bytes], resize: int | None):
    """Encoded images (e.g. the PNGs of generation shards) as torch-fidelity reads files."""
    from PIL import Image
    from torch.utils.data import Dataset

    transforms = image_transform(resize)

    class EncodedImages(Dataset):
        def __len__(self) -> int:
            return len(blobs)

        def __getitem__(self, index: int):
            return transforms(Image.open(io.BytesIO(blobs[index])).convert("RGB"))

    return EncodedImages()


class InceptionFeatures:
    """torch-fidelity's InceptionV3 loaded from a local weights file, on ``device``."""

    def __init__(self, weights: Path, layer: str = DEFAULT_LAYER, device: str = "cpu", batch_size: int = 32):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.weights = Path(weights)
        if not self.weights.is_file():
            raise FidInputError(f"{self.weights}: no Inception weights file (torch-fidelity's "
                                f"weights-inception-2015-12-05-6726825d.pth)")
        if layer not in FeatureExtractorInceptionV3.get_provided_features_list():
            raise FidInputError(f"feature layer {layer!r} is not one of torch-fidelity's "
                                f"{FeatureExtractorInceptionV3.get_provided_features_list()}")
        self.layer, self.device, self.batch_size = layer, device, batch_size
        self.network = FeatureExtractorInceptionV3("inception-v3-compat", [layer],
                                                   feature_extractor_weights_path=str(self.weights)).to(device)

    def features(self, dataset):
        """Inception features of every image: torch-fidelity's own progress bar on a terminal, a line before
        and after (with the duration) in logs; nothing with --quiet."""
        from torch_fidelity.utils import get_featuresdict_from_dataset

        from tokencompose.tasks.progress import bar_wanted, is_quiet, timed

        with timed(f"Inception features of {len(dataset)} images"):
            return get_featuresdict_from_dataset(dataset, self.network, self.batch_size,
                                                 self.device.startswith("cuda"), True,
                                                 not is_quiet() and bar_wanted())[self.layer]

    def statistics(self, dataset) -> Statistics:
        from torch_fidelity.metric_fid import fid_features_to_statistics

        features = self.features(dataset)
        stats = fid_features_to_statistics(features)
        return Statistics(stats["mu"], stats["sigma"], len(features))


def files_dataset(files: Sequence[Path], resize: int | None):
    from torch_fidelity.datasets import ImagesPathDataset

    return ImagesPathDataset([str(f) for f in files], image_transform(resize))


def real_statistics(folder: Path, extractor: InceptionFeatures, cache_dir: Path, resize: int | None = None,
                    files: Sequence[Path] | None = None) -> tuple[Statistics, bool]:
    """The statistics of the real images in ``folder`` (or of ``files`` in it: the images whose captions
    were generated) and whether they came from the cache."""
    folder = Path(folder)
    files = list_images(folder) if files is None else sorted(Path(f) for f in files)
    if len(files) < 2:
        raise FidInputError(f"{folder}: FID needs at least 2 real images, got {len(files)}")
    key = content_key(folder, files, extractor.weights, extractor.layer, resize)
    cached = Path(cache_dir) / f"fid-real-{key[:40]}.npz"
    if cached.is_file():
        with np.load(cached) as data:
            return Statistics(data["mu"], data["sigma"], int(data["count"])), True
    stats = extractor.statistics(files_dataset(files, resize))
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f".{cached.name}.tmp.npz")
    np.savez(partial, mu=stats.mu, sigma=stats.sigma, count=stats.count)
    partial.replace(cached)
    return stats, False


def frechet_distance(real: Statistics, generated: Statistics) -> float:
    """torch-fidelity's distance between two sets of statistics."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    return float(fid_statistics_to_metric(real.as_fidelity(), generated.as_fidelity(), False)[KEY_METRIC_FID])


def fid(real_folder: Path, generated, extractor: InceptionFeatures, cache_dir: Path, resize: int | None = None,
        real_files: Sequence[Path] | None = None) -> dict:
    """FID of ``generated`` (image files, or encoded image bytes) against ``real_folder`` (or ``real_files``
    in it)."""
    items = list(generated)
    if len(items) < 2:
        raise FidInputError(f"FID needs at least 2 generated images, got {len(items)}")
    dataset = bytes_dataset(items, resize) if isinstance(items[0], (bytes, bytearray)) else files_dataset(items, resize)
    real, hit = real_statistics(real_folder, extractor, cache_dir, resize, real_files)
    generated_stats = extractor.statistics(dataset)
    return {"fid": frechet_distance(real, generated_stats), "real_images": real.count,
            "generated_images": generated_stats.count, "real_cache_hit": hit, "layer": extractor.layer,
            "resize": resize}
