#!/bin/sh
# Rewrite docs/images/viewer-sample.png (the README's picture of the sample page) from the browser test.
# The test itself only writes screenshots to a temporary folder; this is the one way to update the picture.
set -e
cd "$(dirname "$0")/.."
HF_HUB_OFFLINE=1 TOKENCOMPOSE_UPDATE_SCREENSHOTS=1 .venv/bin/python -m pytest -q \
    "tests/viewer/test_browser.py::test_gallery_search_and_mask_toggles" "$@"
git status --short docs/images/viewer-sample.png
