"""The reasons are one enum each: the docs, the viewer and the samples use their values."""
import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from tokencompose.schemas.reasons import REASON_HELP, NounReason, RejectReason, reason_help, reasons_markdown
from tokencompose.schemas.reports import Reject
from tokencompose.schemas.sample import Noun

DOCS = Path(__file__).resolve().parents[2] / "docs"
# "reason `x`", "reasons (`x`, `y`, ...)", "reject reason (`x`, ...)": the codes named right after the word
NAMED_REASONS = re.compile(r"reasons?\s+\(?((?:`[a-z_]+`(?:,?\s+or\s+|,\s+)?)+)")


def test_every_reason_has_a_meaning_and_the_values_are_the_strings_written():
    assert set(REASON_HELP) == {*NounReason, *RejectReason}
    assert all(text.strip() for text in REASON_HELP.values())
    assert json.dumps({"reason": NounReason.STOP_LIST}) == '{"reason": "stop_list"}'
    assert Noun(text="cat", span=(0, 3), reason="no_detection").model_dump(mode="json")["reason"] == "no_detection"


def test_an_unknown_reason_is_refused_by_the_records():
    with pytest.raises(ValidationError, match="no_such_reason"):
        Noun(text="cat", span=(0, 3), reason="no_such_reason")
    with pytest.raises(ValidationError, match="reason"):
        Reject(image_id=1, file_name="a.jpg", stage="image", reason="lost")


def test_the_reasons_page_is_generated_from_the_enums():
    assert (DOCS / "reasons.md").read_text(encoding="utf-8") == reasons_markdown(), \
        "docs/reasons.md is stale: write reasons_markdown() into it"


def test_every_reason_the_docs_name_is_a_member():
    values = {member.value for member in (*NounReason, *RejectReason)}
    named = {}
    for page in DOCS.glob("*.md"):
        for match in NAMED_REASONS.finditer(page.read_text(encoding="utf-8")):
            for code in re.findall(r"`([a-z_]+)`", match.group(1)):
                named[code] = page.name
    assert len(named) >= 5
    assert {code: page for code, page in named.items() if code not in values} == {}


def test_the_viewer_help_tells_the_two_bad_annotations_apart():
    assert reason_help("bad_annotation") == REASON_HELP[NounReason.BAD_ANNOTATION]
    assert reason_help("bad_annotation", RejectReason) == REASON_HELP[RejectReason.BAD_ANNOTATION]
    assert reason_help("gone", RejectReason) == "" and reason_help(None) == ""
