"""Every reason the build gives: why a noun has no mask, and why an image is not in the dataset.

The values are the strings written into the samples (``Noun.reason``), ``rejects.jsonl``
(``Reject.reason``) and ``stats.json``; the viewer labels them with :data:`REASON_HELP` and
docs/reasons.md lists them (a test checks the two agree).
"""
from __future__ import annotations

from enum import StrEnum


class NounReason(StrEnum):
    """Why a noun of the chosen caption has no mask."""

    STOP_LIST = "stop_list"
    NO_COCO_CATEGORY = "no_coco_category"
    CATEGORY_NOT_ANNOTATED = "category_not_annotated_in_image"
    NO_INSTANCE_ANNOTATIONS = "no_instance_annotations"
    EMPTY_MASK = "empty_mask"
    NO_DETECTION = "no_detection"
    BAD_ANNOTATION = "bad_annotation"
    NO_HUMAN_CATEGORY = "no_human_category"
    CATEGORY_VERIFIED_ABSENT = "category_verified_absent"
    CATEGORY_NOT_VERIFIED = "category_not_verified_in_image"
    IMAGE_NOT_IN_LVIS = "image_not_in_lvis"


class RejectReason(StrEnum):
    """Why an image (or a source entry) is not in the dataset: the ``reason`` of a ``Reject`` row."""

    # the source files (stage "source")
    BAD_IMAGE_ENTRY = "bad_image_entry"
    BAD_CAPTION_ENTRY = "bad_caption_entry"
    BAD_ANNOTATION = "bad_annotation"
    NO_IMAGE = "no_image"
    DUPLICATE_KEY = "duplicate_key"
    DUPLICATE_URL = "duplicate_url"
    DOWNLOAD_FAILED = "download_failed"
    # the image selection (stage "selection")
    MALFORMED_VSR_LINE = "malformed_vsr_line"
    NOT_IN_SOURCE = "not_in_source"
    # the image file (stage "image")
    UNSAFE_FILE_NAME = "unsafe_file_name"
    MISSING_FILE = "missing_file"
    UNREADABLE_FILE = "unreadable_file"
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    CORRUPT_IMAGE = "corrupt_image"
    FORMAT_MISMATCH = "format_mismatch"
    SIZE_MISMATCH = "size_mismatch"
    UNSUPPORTED_MODE = "unsupported_mode"
    ABSURD_DIMENSIONS = "absurd_dimensions"
    # the pipeline stages (stages "captions", "nouns", "grounding")
    NO_CAPTIONS = "no_captions"
    NO_USABLE_CAPTION = "no_usable_caption"
    NO_NOUNS = "no_nouns"
    NO_MASKS = "no_masks"


REASON_HELP: dict[NounReason | RejectReason, str] = {
    NounReason.STOP_LIST: "on the stop-list (nouns.stop_list): names no object to mask, never grounded",
    NounReason.NO_COCO_CATEGORY: "the noun table maps the noun to no COCO category",
    NounReason.CATEGORY_NOT_ANNOTATED: "the image has no instance of the noun's category",
    NounReason.NO_INSTANCE_ANNOTATIONS: "no annotation file of the source that names the category was given",
    NounReason.EMPTY_MASK: "the annotations or the detector's boxes gave a mask with no pixel",
    NounReason.NO_DETECTION: "the detector found no box for the noun",
    NounReason.BAD_ANNOTATION: "an annotation of the noun's category is malformed in the source",
    NounReason.NO_HUMAN_CATEGORY: "no human annotation source (COCO, LVIS, COCO-Stuff) nor hypernym names the noun",
    NounReason.CATEGORY_VERIFIED_ABSENT: "LVIS checked the category and found it absent from the image",
    NounReason.CATEGORY_NOT_VERIFIED: "LVIS neither annotates the category in the image nor checked it absent",
    NounReason.IMAGE_NOT_IN_LVIS: "no LVIS file lists the image",
    RejectReason.BAD_IMAGE_ENTRY: "an entry of the captions file's images list is malformed",
    RejectReason.BAD_CAPTION_ENTRY: "an entry of the captions file's annotations list is malformed",
    RejectReason.BAD_ANNOTATION: "an instance (or LVIS image) entry is malformed; it is dropped",
    RejectReason.NO_IMAGE: "a row of a dataset source (hf, wds, folder) has no image",
    RejectReason.DOWNLOAD_FAILED: "img2dataset's parquet beside a wds tar lists the row as failed to download or "
                                  "resize; the detail gives its status, error message and URL",
    RejectReason.DUPLICATE_KEY: "a row of a dataset source repeats the key of an earlier row; the first is kept",
    RejectReason.DUPLICATE_URL: "a row of a dataset source repeats the image URL of an earlier row; the first is kept",
    RejectReason.MALFORMED_VSR_LINE: "a line of a VSR file is not a JSON object with an image name",
    RejectReason.NOT_IN_SOURCE: "a VSR file names an image the captions file does not list",
    RejectReason.UNSAFE_FILE_NAME: "the file name is empty, holds a NUL byte or points outside the image folder",
    RejectReason.MISSING_FILE: "the image file does not exist",
    RejectReason.UNREADABLE_FILE: "the image file cannot be read (or is not a regular file)",
    RejectReason.EMPTY_FILE: "the image file is empty",
    RejectReason.NOT_AN_IMAGE: "the file is no image format Pillow knows",
    RejectReason.CORRUPT_IMAGE: "the image data does not decode",
    RejectReason.FORMAT_MISMATCH: "the file's format is not the dataset's image_field",
    RejectReason.SIZE_MISMATCH: "the file's size is not the one the captions file gives",
    RejectReason.UNSUPPORTED_MODE: "the image mode does not convert to 8-bit RGB",
    RejectReason.ABSURD_DIMENSIONS: "the image is smaller or larger than the image limits allow",
    RejectReason.NO_CAPTIONS: "the image has no caption",
    RejectReason.NO_USABLE_CAPTION: "every caption is excluded (not text, empty, too long, not in the Latin script)",
    RejectReason.NO_NOUNS: "the chosen caption has no noun phrase",
    RejectReason.NO_MASKS: "no noun got a mask (output.require_mask)",
}


def reason_help(reason: str | None, kind: type[NounReason] | type[RejectReason] = NounReason) -> str:
    """What a reason of ``kind`` means; "" for a value that is none of its members (e.g. an older dataset's)."""
    if reason is None:
        return ""
    try:
        return REASON_HELP[kind(reason)]
    except ValueError:
        return ""


def reasons_markdown() -> str:
    """docs/reasons.md: every reason with what it means (tests/schemas/test_reasons.py keeps the file equal)."""
    lines = ["# Reasons", "", "Generated from `schemas/reasons.py` (`NounReason`, `RejectReason`, `REASON_HELP`); "
             "a test fails when this file and the enums differ.", ""]
    for title, kind in (("Why a noun has no mask (`Noun.reason`, stats.json)", NounReason),
                        ("Why an image is rejected (`Reject.reason`, rejects.jsonl)", RejectReason)):
        lines += [f"## {title}", "", "| reason | meaning |", "|---|---|"]
        lines += [f"| `{member.value}` | {REASON_HELP[member]} |" for member in kind]
        lines.append("")
    return "\n".join(lines)
