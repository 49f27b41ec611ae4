"""The pages work in headless Chromium under the Content-Security-Policy every response carries
(issue 16): their scripts are files of ours, and the images they make from fetched data (blob: URLs:
the thumbnails, the timeline's plot) are shown. Needs chromium and chromium-driver, like test_browser."""
import time

import pytest

from daas import timeline
from tests.conftest import make_settings, skimage_photo
from tests.test_browser import browser  # noqa: F401  (the fixture)
from web import SECURITY_HEADERS

pytestmark = pytest.mark.browser


def shown(driver, selector: str) -> bool:
    """Whether the image at `selector` was loaded from a blob: URL and decoded (CSP allowed it)."""
    return driver.execute_script(
        "const img = document.querySelector(arguments[0]);"
        "return !!img && img.src.startsWith('blob:') && img.complete && img.naturalWidth > 0;", selector)


def test_under_the_csp_the_keyed_pages_run_their_scripts_and_show_blob_images(local_aws, browser, tmp_path):  # noqa: F811
    import requests
    from selenium.webdriver.support.ui import WebDriverWait

    from daas.stack import Stack

    settings = make_settings(local_aws, tmp_path, api_keys="csp-key")
    now = time.time()
    for i in range(3):  # a scaling timeline to plot, as the controller would have written it
        timeline.append(settings.state_dir, {"t": now - 20 + 10 * i, "visible": i, "in_flight": 0,
                                             "running": 1, "starting": 0, "launched": 0})
    photo = tmp_path / "coffee.png"
    photo.write_bytes(skimage_photo("coffee.png"))
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        url = stack.start_web()
        page = requests.get(f"{url}/", timeout=10)
        assert page.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
        browser.get(url + "/")
        browser.execute_script("localStorage.setItem('daas-api-key', 'csp-key')")
        browser.get(url + "/ops/timeline")  # timeline.js fetches the plot with the key
        WebDriverWait(browser, 30, 0.2).until(lambda d: shown(d, "#timeline"))
        browser.get(url + "/")  # app.js uploads (no worker: the job stays queued) and shows thumbnails
        browser.find_element("id", "images").send_keys(str(photo))
        browser.find_element("id", "submit").click()
        WebDriverWait(browser, 30, 0.2).until(lambda d: shown(d, "#results tbody tr img"))
