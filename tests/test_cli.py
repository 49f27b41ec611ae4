"""`python -m daas classify` against a running web tier with API keys on (issue 16): it sends the key
from DAAS_API_KEY or --key, and says in one line what to do when the key is missing or wrong."""
import csv
import json
import os
import subprocess
import sys

import pytest

from daas.stack import Stack
from tests.conftest import make_settings, skimage_photo

KEY = "cli-k3y"
RATE_LIMIT = 40  # images per minute per key: one request of more is refused whatever the wait


@pytest.fixture(scope="module")
def keyed_service(local_aws, tmp_path_factory):
    """A web tier with DAAS_API_KEYS and one worker; yields (url, a folder with one photo)."""
    tmp = tmp_path_factory.mktemp("cli")
    settings = make_settings(local_aws, tmp, api_keys=KEY, rate_limit=RATE_LIMIT)
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
    assert from_env.stdout.startswith(f"{photos / 'cup.png'}: espresso (")
    from_option = classify(url, photos, "--key", KEY)
    assert from_option.returncode == 0 and from_option.stdout.startswith(f"{photos / 'cup.png'}: espresso ("), \
        from_option.stderr


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
    web = subprocess.run([sys.executable, "-m", "daas", "web"], env={**env, "DAAS_WEB_PORT": str(free_port())},
                         capture_output=True, text=True, timeout=120)  # before gunicorn: no worker's traceback
    assert web.returncode == 1 and web.stderr.startswith("daas web: Could not connect to the endpoint URL"), web.stderr
    timeline = subprocess.run([sys.executable, "-m", "daas", "timeline"], env=env, capture_output=True, text=True, timeout=60)
    assert timeline.returncode == 1 and timeline.stderr.startswith("no scaling decisions recorded yet in"), timeline.stderr


def test_a_request_refused_whole_does_not_end_the_run_and_each_file_gets_its_own_answer(keyed_service, tmp_path):
    """Files the service refuses all together (400) are sent again one at a time, each with its
    own reason; the other requests go on; results come in the files' order, named by their path;
    what is not an image is counted, not sent."""
    for folder, data in (("cats", b""), ("dogs", skimage_photo("coffee.png"))):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "1.png").write_bytes(data)  # one name in two folders, sent in one request
    (tmp_path / "a_empty.jpg").write_bytes(b"")
    (tmp_path / "b_text.jpg").write_bytes(b"not an image at all")
    (tmp_path / "notes.txt").write_text("skipped")
    run = classify(keyed_service[0], tmp_path, "--batch", "2", "--csv", str(tmp_path / "out.csv"), key=KEY)
    assert run.returncode == 1, run.stderr  # three files failed
    lines = run.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        str(tmp_path / name) for name in ("a_empty.jpg", "b_text.jpg", "cats/1.png", "dogs/1.png")]
    assert lines[0].endswith("ERROR upload rejected (400): a_empty.jpg: the file is empty"), lines[0]
    assert "b_text.jpg: " in lines[1] and "a_empty" not in lines[1], lines[1]
    assert lines[2] == f"{tmp_path / 'cats/1.png'}: ERROR the file is empty", lines  # its own answer, not dogs'
    assert lines[3].startswith(f"{tmp_path / 'dogs/1.png'}: espresso ("), lines
    assert "skipped 1 file(s) in the folders without an image suffix" in run.stderr, run.stderr
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert [row["path"] for row in rows] == [line.split(": ")[0] for line in lines]


def test_the_rate_limit_is_waited_out_and_no_image_is_lost(keyed_service, tmp_path):
    """A request of more images than the limit allows at once (429 without Retry-After) is sent a
    file at a time; a 429 with Retry-After is sent again after it, within --timeout."""
    photo = skimage_photo("coffee.png")
    for n in range(RATE_LIMIT + 5):
        (tmp_path / f"cup_{n:02}.png").write_bytes(photo)
    run = classify(keyed_service[0], tmp_path, "--batch", str(RATE_LIMIT + 5), key=KEY)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stdout.count(": espresso (") == RATE_LIMIT + 5
    assert [line.split(": ")[0] for line in run.stdout.splitlines()] == [
        str(tmp_path / f"cup_{n:02}.png") for n in range(RATE_LIMIT + 5)]


def test_timeline_prints_json_lines_and_refuses_a_count_under_one(tmp_path):
    from daas import timeline

    for n in range(3000):  # more than a pipe holds
        timeline.append(tmp_path, {"t": float(n), "desired": n % 3})
    env = {**os.environ, "DAAS_STATE_DIR": str(tmp_path)}
    last = subprocess.run([sys.executable, "-m", "daas", "timeline", "--last", "2"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert [json.loads(line)["t"] for line in last.stdout.splitlines()] == [2998.0, 2999.0], last.stderr
    zero = subprocess.run([sys.executable, "-m", "daas", "timeline", "--last", "0"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert zero.returncode == 2 and "'0' is not a whole number of 1 or more" in zero.stderr, zero.stderr
    # `daas timeline | head -1`: the reader goes away; no traceback.
    head = subprocess.run(f"{sys.executable} -m daas timeline --last 3000 | head -1", shell=True, env=env,
                          capture_output=True, text=True, timeout=60)
    assert head.stdout.count("\n") == 1 and head.stderr == "", head.stderr


def test_no_credentials_for_the_local_endpoint_says_that_any_will_do(tmp_path):
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update({"DAAS_AWS_ENDPOINT": "http://127.0.0.1:9", "DAAS_STATE_DIR": str(tmp_path), "HOME": str(tmp_path),
                "AWS_EC2_METADATA_DISABLED": "true"})  # boto3 would ask the instance metadata address next
    init = subprocess.run([sys.executable, "-m", "daas", "init"], env=env, capture_output=True, text=True, timeout=120)
    assert init.returncode == 1 and init.stderr.strip().splitlines() == [
        "daas init: Unable to locate credentials (the local endpoint takes any: AWS_ACCESS_KEY_ID=testing "
        "AWS_SECRET_ACCESS_KEY=testing, as `daas up` sets them for its processes)"], init.stderr


def test_make_installs_a_daas_command_beside_python():
    from pathlib import Path

    command = Path(sys.executable).parent / "daas"
    run = subprocess.run([str(command), "classify", "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "--csv" in run.stdout, run.stderr


def test_a_file_that_cannot_be_read_is_a_refusal_of_its_own(tmp_path):
    import time

    from daas.client import ServiceClient

    gone = tmp_path / "gone.png"  # listed, then deleted before it was sent
    sent = ServiceClient("http://127.0.0.1:9")._send([gone], time.monotonic() + 5)  # no request is made
    assert [(part.paths, part.error) for part in sent] == [([gone], "cannot read the file: No such file or directory")]
