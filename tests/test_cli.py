"""`python -m daas classify` against a running web tier with API keys on (issue 16): it sends the key
from DAAS_API_KEY or --key, and says in one line what to do when the key is missing or wrong."""
import os
import subprocess
import sys

import pytest

from daas.stack import Stack
from tests.conftest import make_settings, skimage_photo

KEY = "cli-k3y"


@pytest.fixture(scope="module")
def keyed_service(local_aws, tmp_path_factory):
    """A web tier with DAAS_API_KEYS and one worker; yields (url, a folder with one photo)."""
    tmp = tmp_path_factory.mktemp("cli")
    settings = make_settings(local_aws, tmp, api_keys=KEY)
    photos = tmp / "photos"
    photos.mkdir()
    (photos / "cup.png").write_bytes(skimage_photo("coffee.png"))
    with Stack(settings, log_dir=tmp / "logs") as stack:
        url = stack.start_web()
        stack.start_worker()
        yield url, photos


def classify(url: str, folder, *options: str, key: str | None = None) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if name != "DAAS_API_KEY"}
    if key is not None:
        env["DAAS_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "daas", "classify", str(folder), "--url", url, *options],
                          env=env, capture_output=True, text=True, timeout=120)


def test_with_the_key_from_the_environment_or_the_option_the_cli_classifies(keyed_service):
    url, photos = keyed_service
    from_env = classify(url, photos, key=KEY)
    assert from_env.returncode == 0, from_env.stderr
    assert from_env.stdout.startswith("cup.png: espresso (")
    from_option = classify(url, photos, "--key", KEY)
    assert from_option.returncode == 0 and from_option.stdout.startswith("cup.png: espresso ("), from_option.stderr


def test_without_a_key_the_cli_says_in_one_line_that_one_is_needed_and_how_to_give_it(keyed_service):
    url, photos = keyed_service
    missing = classify(url, photos)
    assert missing.returncode != 0 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [
        f"{url} needs an API key (401): set the environment variable DAAS_API_KEY (or pass --key KEY)"]
    wrong = classify(url, photos, key="guess")
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert wrong.stderr.strip().splitlines() == [
        f"{url} refused the API key (401): check the key in DAAS_API_KEY or --key against the service's DAAS_API_KEYS"]


def test_a_service_that_is_not_running_is_told_in_one_line_with_what_to_do(tmp_path):
    from daas.stack import free_port

    (tmp_path / "cup.png").write_bytes(skimage_photo("coffee.png"))
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    down = classify(url, tmp_path)
    assert down.returncode != 0 and "Traceback" not in down.stderr
    assert down.stderr.strip().splitlines() == [
        f"cannot reach {url} (Connection refused): is the service running (`make run`)? Else give its address with --url"]


def test_an_aws_endpoint_that_does_not_answer_is_told_in_one_line(tmp_path):
    from daas.stack import free_port

    env = {**os.environ, "DAAS_AWS_ENDPOINT": f"http://127.0.0.1:{free_port()}", "DAAS_STATE_DIR": str(tmp_path),
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    init = subprocess.run([sys.executable, "-m", "daas", "init"], env=env, capture_output=True, text=True, timeout=120)
    assert init.returncode == 1 and "Traceback" not in init.stderr, init.stderr
    assert init.stderr.startswith("daas init: Could not connect to the endpoint URL"), init.stderr
    timeline = subprocess.run([sys.executable, "-m", "daas", "timeline"], env=env, capture_output=True, text=True, timeout=60)
    assert timeline.returncode == 1 and timeline.stderr.startswith("no scaling decisions recorded yet in"), timeline.stderr
