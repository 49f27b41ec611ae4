"""The upload form in headless Chromium (Debian's chromium + chromium-driver, installed by .ci/run)."""
import os
import shutil

import pytest

from tests.conftest import skimage_photo

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI"):
            pytest.fail("CI must have chromium and chromedriver (.ci/run installs them)")
        pytest.skip("chromium/chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}", "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def test_form_uploads_two_images_and_shows_both_labels(service, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    files = []
    for name in ("coffee.png", "camera.png"):
        path = tmp_path / name
        path.write_bytes(skimage_photo(name))
        files.append(str(path))
    browser.get(service.url + "/")
    browser.find_element(By.ID, "images").send_keys("\n".join(files))
    browser.find_element(By.ID, "submit").click()

    def labels(driver):
        rows = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr.done")
        return {r.find_element(By.CSS_SELECTOR, ".name").text: r.find_element(By.CSS_SELECTOR, "summary").text
                for r in rows} if len(rows) == 2 else None

    found = WebDriverWait(browser, 90, poll_frequency=0.2).until(labels)
    assert found == {"coffee.png": "espresso", "camera.png": "tripod"}
    assert "2 of 2 images finished" in browser.find_element(By.ID, "progress").text
    # Top-5 on demand: opening the details shows five ranked labels.
    browser.find_element(By.CSS_SELECTOR, "#results tbody tr.done summary").click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results tbody tr.done details[open] li")) == 5
    browser.save_screenshot(str(tmp_path / "form.png"))


def test_status_panel_and_flower_dashboard_show_a_real_run(local_aws, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from daas.stack import Stack
    from tests.conftest import Service, make_settings

    settings = make_settings(local_aws, tmp_path, flower_user="ops", flower_password="pw")
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        service = Service(stack, stack.start_web())
        flower = stack.start_flower()
        stack.start_controller()  # the status panel shows the autoscaler's latest measurement
        worker = stack.start_worker()
        job = service.submit([(f"{i}.png", skimage_photo("coffee.png")) for i in range(6)]).json()
        service.wait_job(job["job_id"])

        browser.get(service.url + "/")
        text = lambda element_id: browser.find_element(By.ID, element_id).text  # noqa: E731
        WebDriverWait(browser, 30, 0.5).until(lambda d: text("st-running") == "1" and text("st-rate") == "6")
        assert text("st-visible") == "0" and text("st-starting") == "0"
        flower_link = browser.find_element(By.ID, "st-flower").get_attribute("href")
        assert flower_link.rstrip("/") == flower

        # Flower's own dashboard (basic auth through the URL) lists the live worker.
        browser.get(flower.replace("http://", "http://ops:pw@") + "/workers")
        hostname = f"{settings.stack}-worker-{worker.pid}@"
        WebDriverWait(browser, 30, 0.5).until(lambda d: hostname in d.page_source)

        browser.get(service.url + "/ops/timeline")
        assert browser.find_element(By.ID, "timeline").get_attribute("alt")


def test_with_api_keys_the_form_asks_for_the_key_once_and_keeps_it(local_aws, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from daas.stack import Stack
    from tests.conftest import make_settings

    settings = make_settings(local_aws, tmp_path, api_keys="s3cret-key")
    photo = tmp_path / "coffee.png"
    photo.write_bytes(skimage_photo("coffee.png"))
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        url = stack.start_web()
        stack.start_worker()
        browser.get(url + "/")
        browser.execute_script("localStorage.clear()")
        browser.get(url + "/")
        browser.find_element(By.ID, "images").send_keys(str(photo))
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 30, 0.2).until(
            lambda d: "needs a valid API key" in d.find_element(By.ID, "key-state").text)
        assert "API key" in browser.find_element(By.ID, "message").text
        browser.find_element(By.ID, "api-key").send_keys("s3cret-key")
        browser.find_element(By.ID, "save-key").click()
        browser.get(url + "/")  # kept in the browser: a new page load needs no typing
        assert browser.find_element(By.ID, "api-key").get_attribute("value") == "s3cret-key"
        browser.find_element(By.ID, "images").send_keys(str(photo))
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 90, 0.2).until(
            lambda d: [r.text for r in d.find_elements(By.CSS_SELECTOR, "#results tbody tr.done summary")] == ["espresso"])
