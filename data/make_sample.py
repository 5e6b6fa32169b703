"""Regenerate the bundled sample (data/sample/) from scikit-image's bundled photos.

The photos are scikit-image's public-domain / CC0 test images. Instance polygons come from
OpenCV's GrabCut seeded with a hand-chosen box (the horse silhouette and the blurred clock are
exact shapes); captions were written for this project. Run: python -m tokencompose.data.make_sample
"""
from __future__ import annotations

import json
from typing import Any
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from PIL import Image

SAMPLE = Path(__file__).resolve().parent / "sample"

# id, skimage name, [(category_id, box x0 y0 x1 y1 or shape)], five captions
Shape = tuple[str, Any]  # (how, argument): grabcut box, ellipse, polygon, shapes
PHOTOS: list[tuple[int, str, list[tuple[int, Shape]], list[str]]] = [
    (139, "astronaut", [(1, ("grabcut", (18, 8, 372, 511, (262, 330, 512, 512))))], [
        "An astronaut in an orange suit smiles in front of an American flag.",
        "A woman in a space suit poses with her helmet and a model of the space shuttle.",
        "A smiling woman astronaut posing for a portrait beside a flag.",
        "An official portrait of a female astronaut holding a helmet.",
        "A person wearing an orange spacesuit stands beside a shuttle model.",
    ]),
    (285, "chelsea", [(17, ("grabcut", (0, 0, 400, 299)))], [
        "A close up of a tabby cat with green eyes.",
        "The face of a striped kitten looking to the side.",
        "A brown tabby cat staring at something off camera.",
        "A cat with yellow eyes and long white whiskers.",
        "Close view of a young cat's face and whiskers.",
    ]),
    (632, "coffee", [(47, ("shapes", [("ellipse", (292, 108, 120, 90)), ("polygon", [(178, 140), (406, 140), (384, 238), (336, 266), (250, 266), (204, 238)]), ("ellipse", (224, 262, 28, 36))])),
       (50, ("shapes", [("polygon", [(404, 66), (422, 70), (392, 246), (376, 244)]), ("ellipse", (366, 284, 40, 42))]))], [
        "A cup of coffee on a red saucer with a spoon.",
        "An espresso cup and a silver spoon sitting on a wooden table.",
        "A red coffee cup filled with espresso on a matching plate.",
        "Top view of a cup of coffee with a teaspoon on the saucer.",
        "A small mug of coffee next to a spoon on a table.",
    ]),
    (724, "rocket", [], [
        "A rocket standing on a launch pad under a blue sky.",
        "A space rocket being prepared for launch.",
        "A tall rocket next to a launch tower.",
        "The launch pad with a white rocket ready for liftoff.",
        "A rocket on the pad on a clear day.",
    ]),
    (776, "horse", [(19, ("threshold", None))], [
        "A black silhouette of a horse on a white background.",
        "The outline of a horse standing and facing right.",
        "A horse drawn as a solid black shape.",
        "Silhouette of a standing horse with a long tail.",
        "A dark horse shape against a plain white backdrop.",
    ]),
    (785, "camera", [(1, ("grabcut", (0, 60, 330, 511, (244, 286, 512, 512))))], [
        "A man looking through a camera mounted on a tripod.",
        "A photographer in a dark coat filming with a video camera in a field.",
        "A black and white photo of a man with a camera on a tripod.",
        "A person operating a camera on a grassy lawn with buildings behind him.",
        "A cameraman standing in a field with his tripod.",
    ]),
    (872, "clock", [(85, ("ellipse", (210, 155, 72, 60)))], [
        "A blurry photo of a clock on a gray wall.",
        "A round wall clock in motion blur.",
        "A clock photographed while the camera moved.",
        "A blurred white clock against a plain wall.",
        "A motion blurred image of an analog clock.",
    ]),
    (885, "stereo_motorcycle", [(4, ("grabcut", (88, 92, 690, 440)))], [
        "A red motorcycle parked in a garage.",
        "A motorbike with a black seat in front of shelves full of boxes.",
        "A red and black motorcycle on a concrete floor next to a bench.",
        "A parked motorcycle with chrome wheels inside a workshop.",
        "A vintage motorcycle standing on its kickstand in a garage.",
    ]),
]

# LVIS v1 and COCO-Stuff annotations of the photos, made for this project the same way (shapes drawn
# on the photo; a stuff region is its shape less the image's thing masks). LVIS: id -> (category id,
# shape), plus each image's checked-absent and not-exhaustive category ids; the horse is left out of
# the LVIS file (LVIS too leaves some COCO images out). COCO-Stuff: category ids as COCO-Stuff's.
LVIS: dict[int, tuple[list[tuple[int, Shape]], list[int], list[int]]] = {
    139: ([(451, ("polygon", [(0, 0), (92, 0), (86, 150), (30, 262), (0, 282)])),
           (991, ("polygon", [(398, 0), (425, 0), (440, 150), (462, 235), (452, 286), (360, 286), (350, 240), (388, 150)])),
           (556, ("ellipse", (392, 430, 112, 84)))], [378], []),
    285: ([(225, ("polygon", [(0, 0), (451, 0), (451, 300), (0, 300)]))], [378], []),
    632: ([(915, ("ellipse", (278, 245, 202, 150)))], [378, 225], []),
    724: ([], [225, 378], []),
    785: ([(189, ("polygon", [(240, 176), (336, 168), (338, 238), (244, 242)])),
           (1121, ("polygon", [(292, 236), (334, 236), (412, 512), (386, 512), (318, 300), (262, 512), (226, 512)]))],
          [378], []),
    872: ([(271, ("ellipse", (210, 155, 72, 60)))], [225], []),
    885: ([(90, ("polygon", [(58, 105), (192, 105), (192, 250), (58, 250)])),
           (143, ("polygon", [(528, 15), (594, 15), (594, 57), (528, 57)])),
           (143, ("polygon", [(600, 30), (661, 30), (661, 99), (600, 99)]))], [207], [143]),
}
# COCO-Stuff's 91 stuff categories (ids 92-182) and "other" (183), listed whole as its files list them
STUFF_CATEGORIES = {c["id"]: c["name"] for c in json.loads((SAMPLE.parent / "coco_stuff_categories.json").read_text())}
STUFF = {  # image id -> [(stuff category id, shape)]; "other" (183) covers the things
    139: [(173, ("polygon", [(92, 0), (512, 0), (512, 300), (92, 300)]))],
    632: [(165, ("polygon", [(0, 0), (600, 0), (600, 400), (0, 400)]))],
    724: [(157, ("polygon", [(0, 0), (640, 0), (640, 300), (0, 300)])),
          (144, ("polygon", [(262, 402), (382, 402), (382, 427), (262, 427)]))],
    785: [(124, ("polygon", [(0, 262), (512, 250), (512, 512), (0, 512)])),
          (96, ("polygon", [(330, 175), (512, 150), (512, 250), (330, 255)])),
          (157, ("polygon", [(0, 0), (512, 0), (512, 150), (330, 175), (0, 200)]))],
    872: [(173, ("polygon", [(0, 0), (400, 0), (400, 300), (0, 300)]))],
    885: [(115, ("polygon", [(0, 400), (741, 390), (741, 500), (0, 500)])),
          (156, ("polygon", [(350, 0), (741, 0), (741, 200), (350, 200)])),
          (177, ("polygon", [(0, 0), (350, 0), (350, 300), (0, 300)]))],
}

VSR_ROWS = [  # (image id or a name missing from the source, caption, relation, label)
    (632, "The spoon is right of the cup.", "right of", 1),
    (139, "The person is in front of the flag.", "in front of", 1),
    (885, "The motorcycle is in front of the bench.", "in front of", 1),
    (285, "The cat is facing the camera.", "facing", 0),
    (632, "The cup is on the saucer.", "on", 1),
    (776, "The horse is facing right.", "facing", 1),
    (724, "The rocket is next to the tower.", "next to", 1),
    (785, "The person is behind the camera.", "behind", 1),
    (872, "The clock is on the wall.", "on", 1),
    ("000000999999.jpg", "The dog is under the table.", "under", 1),
]


def _photo(name: str) -> np.ndarray:
    image = getattr(skimage.data, name)()
    image = image[0] if isinstance(image, tuple) else image
    if image.dtype == bool:
        image = np.where(image, 255, 0).astype(np.uint8)
    return image


def _mask(image: np.ndarray, how: str, arg) -> np.ndarray:
    height, width = image.shape[:2]
    if how == "threshold":
        return image < 128
    if how == "ellipse":
        return _shapes(height, width, [("ellipse", arg)])
    if how == "shapes":
        return _shapes(height, width, arg)
    rgb = image if image.ndim == 3 else np.stack([image] * 3, axis=-1)
    x0, y0, x1, y1, *exclude = arg
    grab = np.zeros((height, width), np.uint8)
    cv2.setRNGSeed(0)
    # OpenCV's stubs require the model arrays, which grabCut allocates itself when given None.
    cv2.grabCut(np.ascontiguousarray(rgb[..., ::-1]), grab, (x0, y0, x1 - x0, y1 - y0), None, None, 8,  # type: ignore[call-overload]
                cv2.GC_INIT_WITH_RECT)
    mask = np.isin(grab, (cv2.GC_FGD, cv2.GC_PR_FGD))
    for ex0, ey0, ex1, ey1 in exclude:  # a region the box must include but that is another object
        mask[ey0:ey1, ex0:ex1] = False
    return mask


def _shapes(height: int, width: int, shapes) -> np.ndarray:
    canvas = np.zeros((height, width), np.uint8)
    for kind, arg in shapes:
        if kind == "ellipse":
            cx, cy, rx, ry = arg
            cv2.ellipse(canvas, (cx, cy), (rx, ry), 0, 0, 360, 1, -1)
        else:
            cv2.fillPoly(canvas, [np.array(arg, np.int32)], 1)
    return canvas.astype(bool)


def _polygons(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        if cv2.contourArea(contour) < 200:
            continue
        approx = cv2.approxPolyDP(contour, 1.0, True).reshape(-1, 2)
        if len(approx) >= 3:
            polygons.append([float(v) for point in approx for v in point])
    return polygons


def main() -> None:
    images_dir = SAMPLE / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    categories = [line.split(",") for line in (SAMPLE.parent / "coco_categories.csv").read_text().splitlines()[1:]]
    images: list[dict[str, Any]] = []
    captions: list[dict[str, Any]] = []
    instances: list[dict[str, Any]] = []
    thing_masks: dict[int, list[np.ndarray]] = {}
    lvis_images: list[dict[str, Any]] = []
    lvis_anns: list[dict[str, Any]] = []
    stuff_anns: list[dict[str, Any]] = []
    for image_id, name, objects, texts in PHOTOS:
        pixels = _photo(name)
        file_name = f"{image_id:012d}.jpg"
        Image.fromarray(pixels).save(images_dir / file_name, quality=90)
        height, width = pixels.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                       "license": 0, "source": f"scikit-image data.{name}"})
        for i, text in enumerate(texts):
            captions.append({"id": image_id * 10 + i, "image_id": image_id, "caption": text})
        thing_masks[image_id] = []
        for category_id, (how, arg) in objects:
            mask = _mask(pixels, how, arg)
            thing_masks[image_id].append(mask)
            polygons = _polygons(mask)
            xs, ys = np.nonzero(mask.any(axis=0))[0], np.nonzero(mask.any(axis=1))[0]
            bbox = [float(xs[0]), float(ys[0]), float(xs[-1] - xs[0] + 1), float(ys[-1] - ys[0] + 1)]
            instances.append({"id": len(instances) + 1, "image_id": image_id, "category_id": category_id,
                              "segmentation": polygons, "area": float(mask.sum()), "bbox": bbox, "iscrowd": 0})
        _human(image_id, pixels, [m for (_, _), m in zip(objects, thing_masks[image_id])], lvis_images, lvis_anns,
               stuff_anns)
    info = {"description": "tokencompose bundled sample: scikit-image photos (public domain / CC0), "
                           "captions and polygons made for this project", "version": "1.0"}
    licenses = [{"id": 0, "name": "public domain / CC0 (scikit-image data)", "url": ""}]
    cats = [{"id": int(i), "name": n, "supercategory": s} for i, n, s in categories]
    common = {"info": info, "licenses": licenses, "images": images}
    (SAMPLE / "captions.json").write_text(json.dumps({**common, "annotations": captions}, indent=1) + "\n")
    (SAMPLE / "instances.json").write_text(
        json.dumps({**common, "annotations": instances, "categories": cats}) + "\n")
    _write_human(info, images, lvis_images, lvis_anns, stuff_anns)
    with open(SAMPLE / "vsr_train.jsonl", "w") as handle:
        for n, (image, caption, relation, label) in enumerate(VSR_ROWS):
            file_name = image if isinstance(image, str) else f"{image:012d}.jpg"
            row = {"image": file_name, "image_link": f"http://images.cocodataset.org/train2017/{file_name}",
                   "caption": caption, "label": label, "relation": relation, "annotator_id": n % 3,
                   "vote_true_validator_id": "[2, 6]", "vote_false_validator_id": "[]", "reference_frame": None}
            handle.write(json.dumps(row) + "\n")


def _bbox(mask: np.ndarray) -> list[float]:
    xs, ys = np.nonzero(mask.any(axis=0))[0], np.nonzero(mask.any(axis=1))[0]
    return [float(xs[0]), float(ys[0]), float(xs[-1] - xs[0] + 1), float(ys[-1] - ys[0] + 1)]


def _human(image_id: int, pixels: np.ndarray, things: list[np.ndarray], lvis_images: list, lvis_anns: list,
           stuff_anns: list) -> None:
    """The photo's LVIS entry and annotations (polygons) and its COCO-Stuff regions (compressed RLE)."""
    from pycocotools import mask as coco_mask

    height, width = pixels.shape[:2]
    if image_id in LVIS:
        shapes, negative, not_exhaustive = LVIS[image_id]
        lvis_images.append({"id": image_id, "width": width, "height": height, "license": 0,
                            "coco_url": f"http://images.cocodataset.org/train2017/{image_id:012d}.jpg",
                            "neg_category_ids": negative, "not_exhaustive_category_ids": not_exhaustive})
        for category_id, shape in shapes:
            mask = _shapes(height, width, [shape])
            lvis_anns.append({"id": len(lvis_anns) + 1, "image_id": image_id, "category_id": category_id,
                              "segmentation": _polygons(mask), "area": float(mask.sum()), "bbox": _bbox(mask)})
    if image_id not in STUFF:
        return
    thing = np.zeros((height, width), bool)
    for mask in things:
        thing |= mask
    regions = [(category_id, _shapes(height, width, [shape]) & ~thing) for category_id, shape in STUFF[image_id]]
    if thing.any():
        regions.append((183, thing))
    for category_id, mask in regions:
        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        stuff_anns.append({"id": len(stuff_anns) + 1, "image_id": image_id, "category_id": category_id,
                           "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                           "area": float(mask.sum()), "bbox": _bbox(mask), "iscrowd": 0})


def _write_human(info: dict, images: list, lvis_images: list, lvis_anns: list, stuff_anns: list) -> None:
    lvis_categories = {c["id"]: c for c in json.loads((SAMPLE.parent / "lvis_categories.json").read_text())}
    used = sorted({a["category_id"] for a in lvis_anns} | {i for e in lvis_images for i in e["neg_category_ids"]})
    licenses = [{"id": 0, "name": "public domain / CC0 (scikit-image data)", "url": ""}]
    (SAMPLE / "lvis.json").write_text(json.dumps({
        "info": {**info, "description": info["description"] + "; LVIS v1 format (categories: the LVIS v1 entries "
                 "used, CC BY 4.0)"}, "licenses": licenses, "images": lvis_images, "annotations": lvis_anns,
        "categories": [lvis_categories[i] for i in used]}) + "\n")
    stuff_images = [{k: v for k, v in image.items() if k != "source"} for image in images]
    (SAMPLE / "stuff.json").write_text(json.dumps({
        "info": {**info, "description": info["description"] + "; COCO-Stuff format"}, "licenses": licenses,
        "images": stuff_images, "annotations": stuff_anns,
        "categories": [{"id": i, "name": n, "supercategory": "other" if n == "other" else "stuff"}
                       for i, n in sorted(STUFF_CATEGORIES.items())]}) + "\n")


if __name__ == "__main__":
    main()
