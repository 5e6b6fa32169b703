"""The viewer in a real browser: headless Chromium (Debian's package) driven by Playwright.

Opens the gallery on the demo shards, searches, opens the coffee cup (key 000000000632), and checks
from screenshots that each noun's mask colour lies over the object's pixels (pixels picked inside the
mask decoded from its RLE, mapped onto the image element on screen), that toggling a noun off removes
exactly that colour, and that the opacity slider blends it. Saves docs/images/viewer-sample.png.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokencompose.schemas.sample import SampleRecord
from tokencompose.tasks.masks import decode
from tokencompose.viewer import render

CHROMIUM = Path(os.environ.get("TOKENCOMPOSE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "viewer-sample.png"
KEY = "000000000632"  # "A cup of coffee on a red saucer with a spoon.": cup = noun 0, spoon = noun 3
CUP, SPOON = 0, 3

if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                                             "(pip install playwright; no `playwright install`)")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, device_scale_factor=1)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    yield page
    context.close()
    assert problems == [], problems


def interior(mask: np.ndarray, margin: int = 4) -> np.ndarray:
    """Mask pixels at least ``margin`` pixels from its edge (so screen rounding cannot leave the mask)."""
    inner = mask.copy()
    for _ in range(margin):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return inner


def pick(mask: np.ndarray, count: int, seed: int) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    assert len(ys) > 0
    chosen = np.random.default_rng(seed).choice(len(ys), size=min(count, len(ys)), replace=False)
    return np.stack([xs[chosen], ys[chosen]], axis=1)


class Screen:
    """Maps image pixels to screenshot pixels through the image element's box on screen."""

    def __init__(self, page, width: int, height: int):
        box = page.locator("#sample-image").bounding_box()
        self.left, self.top = box["x"], box["y"]
        self.sx, self.sy = box["width"] / width, box["height"] / height
        self.page = page

    def grab(self, points: np.ndarray) -> np.ndarray:
        shot = np.asarray(Image.open(io.BytesIO(self.page.screenshot())).convert("RGB")).astype(int)
        xs = np.floor(self.left + (points[:, 0] + 0.5) * self.sx).astype(int)
        ys = np.floor(self.top + (points[:, 1] + 0.5) * self.sy).astype(int)
        return shot[ys, xs]


def near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: float = 30.0) -> float:
    """Share of pixels within ``tolerance`` (Euclidean RGB) of ``colour``."""
    return float(np.mean(np.linalg.norm(pixels - np.array(colour), axis=1) <= tolerance))


def save_readme_screenshot(page) -> None:
    """The default view (opacity 55%, boxes on), top of the page, in 256 colours to keep the PNG small."""
    shot = Image.open(io.BytesIO(page.screenshot(clip={"x": 0, "y": 0, "width": 1280, "height": 720})))
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shot.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(SCREENSHOT, optimize=True)


def wait_for_images(page) -> None:
    page.wait_for_function("""() => [document.getElementById('sample-image'),
                                     ...document.querySelectorAll('img.mask')]
                                    .every(img => img.complete && img.naturalWidth > 0)""")


def test_gallery_search_and_mask_toggles(live_server, page):
    page.goto(live_server.url + "/")
    assert page.locator("li.card").count() == 7
    page.fill("#search", "spoon")
    page.press("#search", "Enter")
    page.wait_for_url("**/?q=spoon*")
    assert page.locator("li.card").count() == 1
    page.click(f'li.card[data-key="{KEY}"] a')
    page.wait_for_url(f"**/sample/{KEY}")
    wait_for_images(page)
    assert page.locator("#caption").inner_text().strip() == "A cup of coffee on a red saucer with a spoon."
    assert page.locator("img.mask").count() == 2

    save_readme_screenshot(page)

    record = SampleRecord.model_validate_json(page.request.get(f"{live_server.url}/sample/{KEY}/record.json").body())
    cup_mask = decode(record.nouns[CUP].mask.model_dump())
    spoon_mask = decode(record.nouns[SPOON].mask.model_dump())
    cup = pick(interior(cup_mask & ~spoon_mask), 300, seed=1)
    spoon = pick(interior(spoon_mask & ~cup_mask), 150, seed=2)
    outside = pick(interior(~cup_mask & ~spoon_mask), 300, seed=3)
    cup_colour, spoon_colour = render.rgb(render.colour(CUP)), render.rgb(render.colour(SPOON))

    page.uncheck("#show-boxes")  # box outlines would cover a few mask pixels
    page.locator("#opacity").fill("100")
    assert page.locator("#opacity-value").inner_text() == "100%"
    screen = Screen(page, record.width, record.height)

    on = {"cup": screen.grab(cup), "spoon": screen.grab(spoon), "outside": screen.grab(outside)}
    assert near(on["cup"], cup_colour) > 0.95
    assert near(on["spoon"], spoon_colour) > 0.95
    assert near(on["outside"], cup_colour) < 0.05 and near(on["outside"], spoon_colour) < 0.05

    page.uncheck(f"#toggle-{CUP}")  # the cup's mask off: its colour goes, the spoon's stays
    assert "off" in page.locator(f'mark.noun[data-noun="{CUP}"]').get_attribute("class")
    cup_off = screen.grab(cup)
    assert near(cup_off, cup_colour) < 0.05
    assert np.abs(cup_off - on["cup"]).mean() > 60  # the photo (a red cup) shows through
    assert near(screen.grab(spoon), spoon_colour) > 0.95
    assert np.abs(screen.grab(outside) - on["outside"]).max() <= 3  # nothing else changed

    page.check(f"#toggle-{CUP}")  # and back on
    assert near(screen.grab(cup), cup_colour) > 0.95

    page.locator("#opacity").fill("50")  # half opacity: half the colour, half the photo
    blended = screen.grab(cup)
    expected = (np.array(cup_colour) + cup_off) / 2
    assert np.median(np.abs(blended - expected)) <= 6

    page.click("#all-off")
    assert np.abs(screen.grab(cup) - cup_off).max() <= 3
    assert near(screen.grab(spoon), spoon_colour) < 0.05
    page.click("#all-on")
    page.locator("#opacity").fill("100")
    assert near(screen.grab(spoon), spoon_colour) > 0.95

    page.click(f'mark.noun[data-noun="{SPOON}"]')  # clicking a noun in the caption toggles its mask
    assert not page.is_checked(f"#toggle-{SPOON}")
    assert near(screen.grab(spoon), spoon_colour) < 0.05


def test_cat_mask_and_dataset_page(live_server, page):
    page.goto(f"{live_server.url}/sample/000000000285")
    wait_for_images(page)
    record = SampleRecord.model_validate_json(page.request.get(
        f"{live_server.url}/sample/000000000285/record.json").body())
    cat = pick(interior(decode(record.nouns[0].mask.model_dump())), 200, seed=4)
    page.uncheck("#show-boxes")
    page.locator("#opacity").fill("100")
    screen = Screen(page, record.width, record.height)
    assert near(screen.grab(cat), render.rgb(render.colour(0))) > 0.95
    page.uncheck("#toggle-0")
    assert near(screen.grab(cat), render.rgb(render.colour(0))) < 0.05

    page.click("text=Dataset")
    page.wait_for_url("**/dataset")
    assert "no_masks" in page.locator("#rejects-by-reason").inner_text()
    assert page.locator("#nouns-per-caption tr").count() == 4  # header + 2, 3 and 4 nouns
