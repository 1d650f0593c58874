"""End to end: the web demo (textvae/serve.py) driven in headless Chromium through Selenium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and the
``selenium`` package; skipped where they are absent. Selenium gets the driver's path, so
Selenium Manager downloads nothing. Set ``TEXTVAE_SCREENSHOT_DIR`` to keep the screenshot.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest


CHROMIUM = os.environ.get("TEXTVAE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TEXTVAE_CHROMEDRIVER", "/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
                       reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"),
]
webdriver = pytest.importorskip("selenium.webdriver")

A = "In the beginning God created heaven and earth."  # 8 words each: on a 9-point path
B = "Jesus wept and the people wondered very greatly."  # the crossfade swaps one word per point


class CrossfadeVAE:
    """Stands in for TextVAE where the test must see the sentence change along the path.

    The tiny test model decodes every code to the same string, so with it the slider cannot show
    different sentences; this stand-in's path fades A's words out and B's in, and its transfer
    names the alpha it got, so the page's wiring is checked exactly. The real model behind the
    same server and page is driven in ``test_page_with_the_real_model``."""

    path = Path("crossfade")
    latent_dim = 2
    meta = {"step": 0}

    class attributes:  # noqa: N801 - mimics checkpoint.Attributes
        labels = ["kjv", "web"]

    def sample(self, n, seed=0, temperature=1.0, z_temperature=0.8):
        return [f"sample {i} of seed {seed}" for i in range(n)]

    def interpolate(self, a, b, steps=5, method="lerp"):
        wa, wb = a.split(), b.split()
        out = []
        for i in range(steps):
            t = i / (steps - 1)
            out.append(" ".join(wa[: round((1 - t) * len(wa))] + wb[len(wb) - round(t * len(wb)):]))
        return out

    def transfer(self, texts, source, target, alpha=None, method="mean-diff", copy_bias=0.0):
        return [f"{source}->{target} at {alpha:g}, copy {copy_bias:g}: {t}" for t in texts]


def start_server(vae):
    from textvae.serve import make_server

    srv = make_server(vae, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    host, port = srv.server_address[:2]
    return srv, f"http://{host}:{port}/"


@pytest.fixture(scope="module")
def crossfade_url():
    srv, url = start_server(CrossfadeVAE())
    yield url
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def real_url(trained_run):
    from textvae.api import TextVAE

    srv, url = start_server(TextVAE.from_pretrained(trained_run))
    yield url
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1100,1500", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def load(browser, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(url)
    wait.until(lambda d: d.find_element(By.ID, "info").text.startswith("checkpoint"))
    return wait, lambda id_: browser.find_element(By.ID, id_)


def interpolate(browser, wait, find, a, b, steps):
    from selenium.webdriver.common.by import By

    find("interp-a").send_keys(a)
    find("interp-b").send_keys(b)
    steps_box = find("interp-steps")
    steps_box.clear()
    steps_box.send_keys(str(steps))
    find("interp-go").click()
    wait.until(lambda d: find("interp-slider").is_enabled() and find("interp-current").text)
    assert find("interp-error").text == ""
    return [li.text for li in find("interp-list").find_elements(By.TAG_NAME, "li")]


def test_slider_walks_the_path_and_the_sentence_changes(browser, crossfade_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    expected = CrossfadeVAE().interpolate(A, B, steps=9)
    wait, find = load(browser, crossfade_url)
    assert "labels: kjv, web" in find("info").text
    assert interpolate(browser, wait, find, A, B, 9) == expected

    slider = find("interp-slider")
    shown = [find("interp-current").text]
    assert shown[0] == A and find("interp-t").text == "t = 0.00"
    for i in range(1, 9):  # one notch at a time, as a user would with the keyboard
        slider.send_keys(Keys.ARROW_RIGHT)
        wait.until(lambda d: find("interp-slider").get_attribute("value") == str(i))
        assert abs(float(find("interp-t").text.removeprefix("t = ")) - i / 8) < 0.006
        shown.append(find("interp-current").text)
        assert browser.find_element(By.CSS_SELECTOR, "#interp-list li.on").text == shown[-1]
    assert shown == expected and shown[-1] == B
    assert len(set(shown)) == 9  # the shown sentence changed at every notch
    slider.send_keys(Keys.HOME)
    wait.until(lambda d: find("interp-current").text == A)

    # transfer: the labels come from the server; moving the alpha or copy-bias slider re-runs the transfer
    from textvae.transfer import DEFAULT_ALPHA, DEFAULT_COPY_BIAS
    from textvae.serve import SLIDER_METHOD

    start = DEFAULT_ALPHA[SLIDER_METHOD]  # the slider starts at its method's default strength
    copy = DEFAULT_COPY_BIAS
    find("transfer-text").send_keys(B)
    find("transfer-go").click()
    wait.until(lambda d: find("transfer-output").text == f"kjv->web at {start:g}, copy {copy:g}: {B}")
    alpha = find("transfer-alpha")
    for _ in range(4):  # four notches of 0.5 to the left
        alpha.send_keys(Keys.ARROW_LEFT)
    wait.until(lambda d: find("transfer-output").text == f"kjv->web at {start - 2:g}, copy {copy:g}: {B}")
    assert find("transfer-alpha-value").text == f"{start - 2:g}"
    bias = find("transfer-copy")
    for _ in range(2):
        bias.send_keys(Keys.ARROW_LEFT)
    wait.until(lambda d: find("transfer-output").text == f"kjv->web at {start - 2:g}, copy {copy - 1:g}: {B}")
    assert find("transfer-copy-value").text == f"{copy - 1:g}"

    find("sample-go").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#samples li")) == 5)

    # bad input shows on the page, and the page keeps working
    find("transfer-text").clear()
    find("transfer-text").send_keys("x" * 600)
    find("transfer-go").click()
    wait.until(lambda d: find("transfer-error").text)
    assert find("transfer-error").text == "Error: 'text' is too long (600 characters; at most 500)"
    find("interp-b").clear()
    find("interp-go").click()
    wait.until(lambda d: find("interp-error").text)
    assert find("interp-error").text == "Error: 'b' is empty: type a sentence"
    assert find("interp-current").text == A  # the last good path is still shown
    for _ in range(4):
        find("interp-slider").send_keys(Keys.ARROW_RIGHT)
    wait.until(lambda d: find("interp-current").text == expected[4])

    shot = tmp_path / "demo.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    keep = os.environ.get("TEXTVAE_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "demo.png")


def test_page_with_the_real_model(browser, real_url, trained_run):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from textvae.api import TextVAE

    vae = TextVAE.from_pretrained(trained_run)
    expected = vae.interpolate(A, B, steps=5, method="slerp")
    wait, find = load(browser, real_url)
    assert "labels: kjv, web" in find("info").text
    assert interpolate(browser, wait, find, A, B, 5) == expected
    find("interp-slider").send_keys(Keys.END)
    wait.until(lambda d: find("interp-t").text == "t = 1.00")
    assert find("interp-current").text == expected[-1]

    find("transfer-text").send_keys(A)
    alpha = find("transfer-alpha")
    alpha.send_keys(Keys.HOME)  # alpha 0: the transfer is the reconstruction
    wait.until(lambda d: find("transfer-output").text)
    assert find("transfer-alpha-value").text == "0"
    assert find("transfer-output").text == vae.reconstruct([A])[0]
    find("sample-go").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#samples li")) == 5)
    assert [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#samples li")] == vae.sample(5, seed=0)
