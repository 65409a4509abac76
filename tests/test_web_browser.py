"""The web page in a real browser: Debian's headless Chromium driven by Selenium, as a new user would use it.

Served in-process on a free loopback port over the two bundled models. ``make test`` installs ``chromium`` and
``chromium-driver`` (apt) and Selenium (the ``dev`` extra); without them this module is skipped, saying why.
Set ``HYPERINVERTER_SCREENSHOT=path.png`` to keep a screenshot of the page after an inversion and a sweep of
edits.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("needs Debian's chromium and chromium-driver (make test installs them)", allow_module_level=True)

from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from hyperinverter.apps import sample_photos
from hyperinverter.apps.web import SWEEP_STEPS
from hyperinverter.catalogue import installed_bundles, local_model_path
from hyperinverter.editing.directions import load_model_directions

TIMEOUT = 90  # seconds for one step: the first inversion loads the model on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    from hyperinverter.apps.web import DEFAULT_LIMITS, build_app

    models = [m for m in ("faces-64", "fashion-32") if m in installed_bundles()]
    if len(models) < 2:
        pytest.skip("needs both bundled models")
    app = build_app(models, device="cpu", examples=sample_photos())
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               max_file_size=DEFAULT_LIMITS.transport_bytes)  # (as `hyperinverter web` serves it)
    yield f"http://127.0.0.1:{port}"
    app.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2400"):
        options.add_argument(flag)
    # Chromium leaves a folder of its own in the temporary folder at every run (its singleton socket's): in ours.
    service = Service(DRIVER, env={**os.environ, "TMPDIR": str(tmp_path_factory.mktemp("chromium"))})
    driver = webdriver.Chrome(service=service, options=options)  # no driver download: Debian's
    yield driver
    driver.quit()


def wait(driver, condition, what: str, timeout: float = TIMEOUT):
    try:
        # The page re-renders while it updates: an element can go stale between finding and reading it.
        return WebDriverWait(driver, timeout, poll_frequency=0.25,
                             ignored_exceptions=[StaleElementReferenceException]).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}; the status says "
                             f"{text_of(driver, '#status')!r}") from None


def text_of(driver, selector: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return found[0].text if found else ""


def image_src(driver, selector: str) -> str | None:
    found = driver.find_elements(By.CSS_SELECTOR, f"{selector} img")
    return found[0].get_attribute("src") if found else None


def upload(driver, selector: str, path: Path) -> None:
    """Put a file into a file field, removing the file it holds first (its × button), as a user does."""
    held = driver.find_elements(By.CSS_SELECTOR, f'{selector} button[aria-label="Clear"]')
    if held:
        held[0].click()
    field = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"{selector} input[type=file]"),
                 f"the upload field of {selector}")[0]
    field.send_keys(str(path))


def invert_and_wait(driver, previous_status: str = "") -> str:
    driver.find_element(By.CSS_SELECTOR, "#invert").click()
    return wait(driver, lambda d: (s := text_of(d, "#status")) and s != previous_status and " s " in s and s,
                "the inversion's time in the status")


def choose(driver, selector: str, option: str) -> None:
    """Pick ``option`` in a Gradio dropdown the way a user does: open it, click the entry."""
    driver.find_element(By.CSS_SELECTOR, f"{selector} input").click()
    entry = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'li[role=option][aria-label="{option}"]'),
                 f"the entry {option!r}")[0]
    entry.click()


def test_upload_invert_edit_switch_model_and_a_bad_file(server, browser, tmp_path):
    driver = browser
    driver.get(server)
    wait(driver, lambda d: "faces-64" in text_of(d, "#model-card"), "the faces-64 model card")
    assert "Where it is weak" in text_of(driver, "#model-card")

    # 1. Upload a bundled photo and invert it.
    photo = next(p for p in sample_photos() if "astronaut" in p.name)
    upload(driver, "#photo", photo)
    wait(driver, lambda d: image_src(d, "#preview"), "the uploaded photo's preview")
    status = invert_and_wait(driver)
    assert "HyperInverter" in status
    wait(driver, lambda d: image_src(d, "#compare"), "the comparison image")
    first_edit = wait(driver, lambda d: image_src(d, "#edited"), "the edited image")
    first = driver.find_element(By.CSS_SELECTOR, "#direction input").get_attribute("value")
    default = load_model_directions(local_model_path("faces-64"))[first].default_strength
    assert float(driver.find_element(By.CSS_SELECTOR, "#strength input[type=number]").get_attribute("value")) == \
        pytest.approx(default)  # the direction's own strength, not the slider's initial 3

    # 2. Move the strength slider with the keyboard: the edit follows.
    slider = driver.find_element(By.CSS_SELECTOR, "#strength input[type=range]")
    slider.click()
    slider.send_keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT, Keys.ARROW_LEFT)
    wait(driver, lambda d: (src := image_src(d, "#edited")) and src != first_edit, "the edit to change")
    value = float(driver.find_element(By.CSS_SELECTOR, "#strength input[type=number]").get_attribute("value"))
    wait(driver, lambda d: (image_src(d, "#edited") or "").endswith(f"{value:+g}.png"), "the last key's edit")

    # 2b. A sweep of strengths takes the edit's place, a row of them; the slider brings the single edit back.
    driver.find_element(By.CSS_SELECTOR, "#sweep").click()
    swept = wait(driver, lambda d: (src := image_src(d, "#edited")) and "_sweep" in src and src, "the sweep")
    assert swept.endswith(f"_sweep{abs(value):g}.png")
    wait(driver, lambda d: edited_aspect(d) == pytest.approx(SWEEP_STEPS, rel=0.05), "a row of the sweep's edits")
    if os.environ.get("HYPERINVERTER_SCREENSHOT"):
        time.sleep(1)
        driver.save_screenshot(os.environ["HYPERINVERTER_SCREENSHOT"])
    slider.send_keys(Keys.ARROW_RIGHT)
    wait(driver, lambda d: (src := image_src(d, "#edited")) and src != swept and edited_aspect(d) < 1.5,
         "the single edit to come back")

    # 3. Switch model: the old results are gone, and an in-domain example inverts.
    choose(driver, "#model", "fashion-32")
    wait(driver, lambda d: "fashion-32" in text_of(d, "#model-card"), "the fashion-32 model card")
    wait(driver, lambda d: not image_src(d, "#compare"), "the previous model's result to be cleared")
    driver.find_element(By.CSS_SELECTOR, "#in-domain button").click()  # its first held-out example
    wait(driver, lambda d: image_src(d, "#preview"), "the example in the photo field")
    status = invert_and_wait(driver)
    assert "HyperInverter" in status and "error" not in status.lower()

    # 4. A file that is not an image: a clear message, no server path, and no stale result on screen.
    bad = tmp_path / "holiday.png"
    bad.write_text("this is not a picture")
    upload(driver, "#photo", bad)
    message = wait(driver, lambda d: (s := text_of(d, "#status")) and "not a readable image" in s and s,
                   "the bad-file message on upload")
    assert "/tmp" not in message and str(tmp_path) not in message
    driver.find_element(By.CSS_SELECTOR, "#invert").click()  # inverting it anyway: the same message, nothing stale
    wait(driver, lambda d: not image_src(d, "#compare") and "not a readable image" in text_of(d, "#status"),
         "the stale result to be cleared")
    assert "/tmp" not in text_of(driver, "#status")


def edited_aspect(driver) -> float:
    """Width over height of the edited image as loaded (0 until it has loaded)."""
    size = driver.execute_script("const im = document.querySelector('#edited img');"
                                 "return im ? [im.naturalWidth, im.naturalHeight] : [0, 1];")
    return size[0] / max(size[1], 1)


def tile_names(driver, selector: str) -> list[str]:
    """The names a screen reader gives the example tiles of ``selector`` (Chromium's computed accessible names)."""
    return [tile.accessible_name for tile in driver.find_elements(By.CSS_SELECTOR, f"{selector} button")]


def button_named(driver, name: str):
    """The button a screen reader calls ``name``, as a user of one finds it."""
    return next(b for b in driver.find_elements(By.TAG_NAME, "button") if b.accessible_name == name)


def test_the_example_tiles_are_named_and_one_loads_by_its_name(server, browser):
    # Gradio shows each example as a button holding an image with an empty alt: a screen reader heard a row of
    # unnamed buttons. Each is named after what it is and its file, also when another model's replace them.
    from hyperinverter.apps import model_examples

    driver = browser
    driver.get(server)
    wait(driver, lambda d: "faces-64" in text_of(d, "#model-card"), "the faces-64 model card")
    held_out = [f"held-out example: {p.name}" for p in model_examples(local_model_path("faces-64"))]
    wait(driver, lambda d: tile_names(d, "#in-domain") == held_out, "the held-out examples' names")
    real = [f"real photo: {p.name}" for p in sample_photos()]
    wait(driver, lambda d: tile_names(d, "#real") == real, "the real photos' names")
    button_named(driver, "real photo: obama.jpg").click()
    wait(driver, lambda d: (src := image_src(d, "#preview")) and src.endswith("/obama.png"), "obama.jpg's preview")

    choose(driver, "#model", "fashion-32")
    held_out = [f"held-out example: {p.name}" for p in model_examples(local_model_path("fashion-32"))]
    wait(driver, lambda d: tile_names(d, "#in-domain") == held_out, "fashion-32's held-out examples' names")
    assert not tile_names(driver, "#real")  # (no faces: no real photos)
    button_named(driver, held_out[-1]).click()  # (000013.png: faces-64 has no such example)
    wait(driver, lambda d: (src := image_src(d, "#preview")) and src.endswith(f"/{held_out[-1][-10:]}"),
         "fashion-32's last example's preview")


def test_a_photo_over_the_upload_limit_says_its_size_and_the_limit(server, browser, tmp_path):
    # Gradio's limit was the page's: a larger photo got only Gradio's toast ('File(s) exceed the maximum allowed
    # size of 20.0 Mb: "big.jpg"'), which gave neither its size nor the limit in MB. Then the page's own check said
    # both after the upload, but one over twice the limit still got Gradio's toast (naming twice the limit). The page
    # now refuses both in the browser, before sending them.
    from hyperinverter.apps.web import DEFAULT_LIMITS

    driver = browser
    driver.get(server)
    wait(driver, lambda d: "faces-64" in text_of(d, "#model-card"), "the faces-64 model card")
    limit = f"{DEFAULT_LIMITS.max_upload_mb:g}"
    big = tmp_path / "big.jpg"
    for size in (DEFAULT_LIMITS.upload_bytes + 2**20, DEFAULT_LIMITS.transport_bytes + 2**20):
        with big.open("wb") as f:
            f.truncate(size)
        driver.execute_script("document.getElementById('upload-refused')?.remove()")
        upload(driver, "#photo", big)
        alert = wait(driver, lambda d: text_of(d, "#upload-refused[role=alert]"), "the page's refusal")
        assert alert == f"big.jpg: is {size / 2**20:.1f} MB; this server takes photos up to {limit} MB"
        assert not image_src(driver, "#preview") and not text_of(driver, '[data-testid="toast-body"]')
    # Dropped on the field rather than chosen: the same.
    driver.execute_script("document.getElementById('upload-refused')?.remove()")
    driver.execute_script("""
        const files = new DataTransfer();
        files.items.add(new File([new Uint8Array(arguments[0])], "dropped.png", {type: "image/png"}));
        const field = document.querySelector("#photo button") || document.querySelector("#photo");
        field.dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true, cancelable: true}));
    """, DEFAULT_LIMITS.upload_bytes + 2**20)
    alert = wait(driver, lambda d: text_of(d, "#upload-refused"), "the refusal of a dropped file")
    assert alert == f"dropped.png: is {float(limit) + 1:.1f} MB; this server takes photos up to {limit} MB"
    time.sleep(1)
    assert not image_src(driver, "#preview")
    # A photo within the limit is taken as before, in either photo field.
    photo = next(p for p in sample_photos() if "obama" in p.name)
    upload(driver, "#photo", photo)
    wait(driver, lambda d: image_src(d, "#preview"), "the photo's preview")
    with big.open("wb") as f:
        f.truncate(DEFAULT_LIMITS.upload_bytes + 1)
    driver.execute_script("document.getElementById('upload-refused')?.remove()")
    upload(driver, "#photo-b", big)
    assert wait(driver, lambda d: text_of(d, "#upload-refused"), "the refusal").startswith("big.jpg: is 20.0 MB")


def test_a_photo_of_two_people_gives_two_faces_to_choose_from(server, browser, tmp_path):
    from PIL import Image

    pytest.importorskip("dlib")
    driver = browser
    driver.get(server)
    wait(driver, lambda d: "faces-64" in text_of(d, "#model-card"), "the faces-64 model card")
    left, right = (Image.open(next(p for p in sample_photos() if name in p.name)).convert("RGB").resize((400, 500))
                   for name in ("astronaut", "obama"))
    pair = Image.new("RGB", (800, 500))
    pair.paste(left, (0, 0))
    pair.paste(right, (400, 0))
    pair.save(tmp_path / "two people.jpg")
    upload(driver, "#photo", tmp_path / "two people.jpg")
    wait(driver, lambda d: image_src(d, "#preview"), "the uploaded photo's preview")
    status = invert_and_wait(driver)
    assert "2 face(s), left to right" in status
    first = wait(driver, lambda d: image_src(d, "#compare"), "the first face's comparison")
    assert driver.find_element(By.CSS_SELECTOR, "#face input").get_attribute("value") == "face 1 of 2 (from the left)"
    choose(driver, "#face", "face 2 of 2 (from the left)")
    wait(driver, lambda d: (src := image_src(d, "#compare")) and src != first, "the second face's comparison")
    # Pasted back: the face picked alone, then every face of the photo in one picture.
    wait(driver, lambda d: "face2" in (image_src(d, "#edited") or ""), "the second face's edit")
    driver.find_element(By.CSS_SELECTOR, "#paste input").click()
    one = wait(driver, lambda d: (src := image_src(d, "#edited")) and "face2" in src and "_photo" in src and src,
               "the second face pasted back")
    driver.find_element(By.CSS_SELECTOR, "#every-face input").click()
    both = wait(driver, lambda d: (src := image_src(d, "#edited")) and "face" not in src.rsplit("/", 1)[-1]
                and "_photo" in src and src, "every face pasted back")
    assert "two-people_hyperinverter_" in both and both != one


def test_a_slow_method_shows_progress_and_cancels(server, browser):
    driver = browser
    driver.get(server)
    wait(driver, lambda d: "faces-64" in text_of(d, "#model-card"), "the faces-64 model card")
    driver.find_element(By.CSS_SELECTOR, "#in-domain button").click()  # a held-out face
    wait(driver, lambda d: image_src(d, "#preview"), "the example in the photo field")
    choose(driver, "#method", "w-opt")  # W optimisation: 1000 steps by default
    driver.find_element(By.CSS_SELECTOR, "#invert").click()
    wait(driver, lambda d: "w-opt: step" in d.find_element(By.TAG_NAME, "body").text, "the progress bar")
    driver.find_element(By.CSS_SELECTOR, "#cancel").click()
    wait(driver, lambda d: "Cancelled" in text_of(d, "#status"), "the cancellation", timeout=30)
    assert not image_src(driver, "#compare")
    # A quick look: fewer steps than the official count (the field shows for the methods that take it).
    steps = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#steps input"), "the steps field")[0]
    assert steps.get_attribute("value") == "1000" and not driver.find_elements(By.CSS_SELECTOR, "#pivot-steps input")
    steps.clear()
    steps.send_keys("3")
    assert "W optimisation" in invert_and_wait(driver, text_of(driver, "#status"))
    wait(driver, lambda d: image_src(d, "#compare"), "the comparison image")


def invert_an_example(driver) -> None:
    """The page's first held-out example of faces-64, inverted as it is (no alignment)."""
    wait(driver, lambda d: "faces-64" in text_of(d, "#model-card"), "the faces-64 model card")
    driver.find_element(By.CSS_SELECTOR, "#align input").click()  # held-out faces fill the frame: no alignment
    driver.find_element(By.CSS_SELECTOR, "#in-domain button").click()
    wait(driver, lambda d: image_src(d, "#preview"), "the example in the photo field")
    invert_and_wait(driver)


def test_a_second_photo_blends_and_mixes(server, browser):
    driver = browser
    driver.get(server)
    invert_an_example(driver)
    assert not image_src(driver, "#blend") and not image_src(driver, "#mixed")  # no second photo yet

    upload(driver, "#photo-b", local_model_path("faces-64") / "examples" / "000003.png")
    blend = wait(driver, lambda d: image_src(d, "#blend"), "the blend of the two photos")
    mix = wait(driver, lambda d: image_src(d, "#mixed"), "the style mix of the two photos")
    for selector, before in (("#t", blend), ("#mix-start", mix)):
        slider = driver.find_element(By.CSS_SELECTOR, f"{selector} input[type=range]")
        slider.click()
        slider.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
        target = "#blend" if selector == "#t" else "#mixed"
        wait(driver, lambda d, t=target, b=before: (src := image_src(d, t)) and src != b, f"{target} to follow")
    assert not image_src(driver, "#swapped")  # a face swap waits for its button (optimisers take minutes)
    driver.find_element(By.CSS_SELECTOR, "#swap").click()
    wait(driver, lambda d: image_src(d, "#swapped"), "the second photo's face on the first")
    assert "error" not in text_of(driver, "#status").lower()


def test_a_generator_alone_inverts_and_edits_by_its_principal_directions(browser, tmp_path):
    # The commonest checkpoint people have is a generator alone: the page runs its optimisation methods and, as it
    # ships no named directions, offers its principal ones (GANSpace). The menu shows no server folders.
    from conftest import build_tiny_generator
    from hyperinverter.apps.web import build_app
    from hyperinverter.convert.gan_files import save_rosinality

    generator = tmp_path / "server-folder" / "my-gan.pt"
    generator.parent.mkdir()
    save_rosinality(generator, build_tiny_generator())
    app = build_app([str(generator)], device="cpu")
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    driver = browser
    try:
        driver.get(f"http://127.0.0.1:{port}")
        wait(driver, lambda d: "generator alone" in text_of(d, "#model-card"), "the generator's card")
        assert "principal directions" in text_of(driver, "#model-card")
        shown = driver.find_element(By.CSS_SELECTOR, "#model input").get_attribute("value")
        assert shown == "server-folder/my-gan.pt", shown
        assert not driver.find_elements(By.XPATH, "//*[contains(text(), \"model's own held-out data\")]")

        upload(driver, "#photo", next(p for p in sample_photos() if "astronaut" in p.name))
        wait(driver, lambda d: image_src(d, "#preview"), "the uploaded photo's preview")
        driver.find_element(By.CSS_SELECTOR, "#align input").click()  # the centred square: no face detection
        steps = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#steps input"), "the steps field")[0]
        steps.clear()
        steps.send_keys("20")  # a quick look: the official 1000 steps were most of this test's minute
        status = invert_and_wait(driver)
        assert "W optimisation" in status
        assert "principal direction 1" == driver.find_element(By.CSS_SELECTOR, "#direction input").get_attribute(
            "value")
        first_edit = wait(driver, lambda d: image_src(d, "#edited"), "the edit by the first principal direction")
        choose(driver, "#direction", "principal direction 2")
        wait(driver, lambda d: (src := image_src(d, "#edited")) and src != first_edit, "the second direction's edit")
    finally:
        app.close()


def test_a_phone_photo_in_heic_uploads_and_inverts(server, browser, tmp_path):
    # The upload field offered only what the browser calls images; a HEIC photo (iPhones' default) could not be
    # read. The page shows its preview (re-encoded: browsers other than Safari cannot show HEIC) and inverts it.
    pillow_heif = pytest.importorskip("pillow_heif", reason="needs pillow-heif (the heif extra)")
    from PIL import Image

    pillow_heif.register_heif_opener()
    photo = tmp_path / "IMG_0001.HEIC"
    Image.open(next(p for p in sample_photos() if "obama" in p.name)).save(photo, format="HEIF")
    driver = browser
    driver.get(server)
    wait(driver, lambda d: "faces-64" in text_of(d, "#model-card"), "the faces-64 model card")
    upload(driver, "#photo", photo)
    wait(driver, lambda d: (src := image_src(d, "#preview")) and src.endswith(".png"), "the photo's PNG preview")
    status = invert_and_wait(driver)
    assert "HyperInverter" in status and "error" not in status.lower()
    wait(driver, lambda d: image_src(d, "#compare"), "the comparison image")


def test_a_slider_reset_button_brings_its_result_along(server, browser):
    # A slider's reset button set its value without an input event: the edit stayed at the strength before, the
    # slider showing the reset one (and the blend likewise at the t before). Each now follows the reset.
    from urllib.parse import unquote

    driver = browser
    driver.get(server)
    invert_an_example(driver)
    upload(driver, "#photo-b", local_model_path("faces-64") / "examples" / "000003.png")
    wait(driver, lambda d: (image_src(d, "#blend") or "").endswith("_t0.5.png"), "the blend at t 0.5")
    for selector, result in (("#strength", "#edited"), ("#t", "#blend")):
        moved = wait(driver, lambda d, r=result: image_src(d, r), f"{result} before the slider moves")
        slider = driver.find_element(By.CSS_SELECTOR, f"{selector} input[type=range]")
        slider.click()
        slider.send_keys(Keys.ARROW_RIGHT)
        before = wait(driver, lambda d, r=result, m=moved: (src := image_src(d, r)) != m and src,
                      f"{result} to follow the slider")
        driver.find_element(By.CSS_SELECTOR, f'{selector} button[aria-label="Reset to default value"]').click()
        value = wait(driver, lambda d, s=selector, b=before: float(d.find_element(
            By.CSS_SELECTOR, f"{s} input[type=number]").get_attribute("value")), f"{selector}'s reset value")
        wanted = f"{value:+g}.png" if selector == "#strength" else f"_t{value:g}.png"
        wait(driver, lambda d, r=result, b=before, w=wanted: (src := image_src(d, r)) and src != b
             and unquote(src).endswith(w), f"{result} at the reset value {value:g}", timeout=20)


def test_a_strength_typed_beyond_the_slider_stays_as_the_box_loses_focus(server, browser):
    # The edit took a strength typed beyond the slider (as the command line does), but Gradio's box clamped it to
    # the slider as it lost focus, without an event: the box said 5 beside the edit at 8, and the sweep took 5.
    driver = browser
    driver.get(server)
    invert_an_example(driver)
    wait(driver, lambda d: image_src(d, "#edited"), "the first edit")
    box = driver.find_element(By.CSS_SELECTOR, "#strength input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("8", Keys.ENTER)
    wait(driver, lambda d: (image_src(d, "#edited") or "").endswith("%2B8.png"), "the edit at strength 8")
    box.send_keys(Keys.TAB)
    driver.find_element(By.CSS_SELECTOR, "#sweep").click()
    wait(driver, lambda d: (image_src(d, "#edited") or "").endswith("_sweep8.png"), "the sweep to ±8")
    assert box.get_attribute("value") == "8"
