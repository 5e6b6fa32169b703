"""The synthetic world's exact detector finds what was drawn and nothing else, through the OWLv2 interface."""
import json

import numpy as np
from PIL import Image

from tokencompose.tasks.multigen.detection import WORLD_DETECTOR, WorldDetector, detected_categories, open_detector
from tokencompose.tasks.source.world import BY_NAME, category_names, shape_mask, write_world


def test_finds_every_drawn_object_and_nothing_else(tmp_path):
    for size in (32, 64):
        folder = write_world(tmp_path / f"w{size}", 40, seed=5, image_size=size)
        instances = json.loads((folder / "instances.json").read_text())
        names = {c["id"]: c["name"] for c in instances["categories"]}
        detector = open_detector(WORLD_DETECTOR)
        assert isinstance(detector, WorldDetector)
        for image in instances["images"]:
            truth = {names[a["category_id"]]: a["bbox"] for a in instances["annotations"] if a["image_id"] == image["id"]}
            picture = Image.open(folder / "images" / image["file_name"])
            scores = detector.score([picture], [category_names()])[0]
            assert set(detected_categories(category_names(), scores, 0.5)) == set(truth)
            for name, (x, y, w, h) in truth.items():
                assert scores[name]["box"] == [x, y, x + w, y + h]


def test_right_colour_wrong_shape_or_speck_scores_low():
    detector = WorldDetector()
    canvas = np.full((64, 64, 3), 200, dtype=np.uint8)
    canvas[10:30, 10:30][shape_mask("disc", 20)] = BY_NAME["kite"].rgb       # a kite's colour, a disc's shape
    canvas[50:52, 50:52] = BY_NAME["donut"].rgb                            # a donut's colour, 4 pixels
    canvas[35:55, 5:25][shape_mask("diamond", 20)] = BY_NAME["kite"].rgb[::-1]  # another hue entirely
    scores = detector.score([Image.fromarray(canvas)], [["kite", "donut", "frisbee"]])[0]
    assert scores["kite"]["score"] < 0.5
    assert scores["donut"]["score"] < 0.5
    assert scores["frisbee"]["score"] is None or scores["frisbee"]["score"] < 0.5


def test_an_unknown_category_is_refused():
    import pytest

    with pytest.raises(ValueError, match="world detector knows"):
        WorldDetector().score([Image.new("RGB", (32, 32))], [["person"]])
