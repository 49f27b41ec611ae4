"""The service end to end on loopback: moto server over HTTP, a real Celery worker, the web tier."""
import io
import json

import pytest
from PIL import Image

from daas import aws, results, storage
from tests.conftest import skimage_photo
from tests.test_images import png_header_only

PHOTOS = {"coffee.png": {"espresso"}, "chelsea.png": {"Egyptian cat", "tabby", "tiger cat"}, "camera.png": {"tripod"}}


def objects(service, bucket: str, prefix: str) -> dict[str, bytes]:
    s3 = aws.client("s3", service.settings)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_a_missing_autoscaler_is_reported_but_keeps_the_web_host_in_the_balancer(service):
    """This stack has a web tier and a worker but no controller or beat: nothing would scale it. The
    web host itself serves (the load balancer's /healthz), and /api/status says what is missing."""
    assert service.http.get(f"{service.url}/healthz").status_code == 200
    status = service.http.get(f"{service.url}/api/status")
    assert status.status_code == 503 and "is the controller running?" in status.json()["error"]


def test_upload_form_is_served(service):
    page = service.http.get(service.url + "/")
    assert page.status_code == 200 and 'name="images"' in page.text and "multiple" in page.text


def test_real_photos_are_labelled_and_stored_in_both_buckets(service):
    response = service.submit([(name, skimage_photo(name)) for name in PHOTOS])
    assert response.status_code == 202
    job = response.json()
    assert [image["name"] for image in job["images"]] == list(PHOTOS)
    done = service.wait_job(job["job_id"])
    assert done["finished"] == done["total"] == 3
    for image in done["images"]:
        assert image["status"] == "done", image
        assert image["label"] in PHOTOS[image["name"]]
        assert len(image["top5"]) == 5 and image["top5"][0][0] == image["label"]
        assert set(image["timings_ms"]) == {"queue", "fetch", "decode", "forward"}

    # The three images went as one task: one object in the input bucket (the photos one after
    # another, keyed by generated ids, never the file names), its results one list in the output
    # bucket, both under the first image's id.
    cfg = service.settings
    inputs = objects(service, cfg.input_bucket, job["job_id"] + "/")
    # Results under results/: the only prefix besides their heartbeats that workers may write.
    outputs = objects(service, cfg.output_bucket, f"results/{job['job_id']}/")
    assert set(inputs) == {f"{job['job_id']}/{job['images'][0]['id']}.pack"}
    assert set(outputs) == {f"results/{job['job_id']}/{job['images'][0]['id']}"}
    assert inputs.popitem()[1] == b"".join(skimage_photo(name) for name in PHOTOS)
    stored = json.loads(outputs[f"results/{job['job_id']}/{job['images'][0]['id']}"])
    assert [result["id"] for result in stored] == [image["id"] for image in job["images"]]
    coffee = stored[list(PHOTOS).index("coffee.png")]
    assert coffee["label"] == "espresso" and coffee["model"] == "efficientnet_lite0"


def test_synchronous_classify_contract(service):
    for route in ("/classify", "/"):
        response = service.http.post(service.url + route, files={"myfile": ("test_07.png", skimage_photo("coffee.png"))})
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.text == "test_07:espresso"


def test_unknown_job_is_a_json_404(service):
    for job_id in ("0" * 32, "..%2F..%2Fetc%2Fpasswd", "nope"):
        response = service.http.get(f"{service.url}/api/jobs/{job_id}")
        assert response.status_code == 404 and "no job" in response.json()["error"]


def jpeg(size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("name,data,status,message", [
    ("empty.png", b"", 400, "empty"),
    ("notes.png", b"this is text, not a picture", 400, "not an image"),
    ("bomb.png", png_header_only(30000, 30000), 413, "megapixels"),
    ("big.jpg", b"\xff\xd8" + b"\0" * (10 * 1024 * 1024), 413, "limit is 10 MB"),
])
def test_bad_uploads_get_a_clear_4xx(service, name, data, status, message):
    response = service.submit([(name, data)])
    assert response.status_code == status
    assert message in response.json()["error"] and name in response.json()["error"]
    sync = service.http.post(service.url + "/classify", files={"myfile": (name, data)})
    assert sync.status_code == status and message in sync.text
    assert sync.text.startswith(f"{name}: ") and sync.text.count(name) == 1, sync.text  # named once


def test_no_files_is_a_400(service):
    response = service.http.post(f"{service.url}/api/jobs", data={"x": "1"})
    assert response.status_code == 400 and "images" in response.json()["error"]


def test_truncated_image_gets_a_per_image_error_and_the_worker_goes_on(service):
    truncated = jpeg((400, 400))[:1500]
    job = service.submit([("cut.jpg", truncated), ("coffee.png", skimage_photo("coffee.png"))]).json()
    done = service.wait_job(job["job_id"])
    by_name = {image["name"]: image for image in done["images"]}
    assert by_name["cut.jpg"]["status"] == "error"
    assert "damaged or truncated" in by_name["cut.jpg"]["error"]
    assert by_name["coffee.png"]["label"] == "espresso"
    sync = service.http.post(service.url + "/classify", files={"myfile": ("cut.jpg", truncated)})
    assert sync.status_code == 422 and "truncated" in sync.text


def test_mixed_batch_keeps_good_images_and_reports_bad_ones(service):
    job = service.submit([("empty.png", b""), ("ok.jpg", jpeg())]).json()
    assert [image["name"] for image in job["images"]] == ["empty.png", "ok.jpg"]  # the files' order
    done = service.wait_job(job["job_id"])
    assert [image["name"] for image in done["images"]] == ["empty.png", "ok.jpg"]
    by_name = {image["name"]: image for image in done["images"]}
    assert by_name["empty.png"]["status"] == "error" and "empty" in by_name["empty.png"]["error"]
    assert by_name["ok.jpg"]["status"] == "done"


def test_path_like_file_names_never_become_keys(service):
    job = service.submit([("../../x.png", jpeg()), ("/etc/passwd", jpeg())]).json()
    assert [image["name"] for image in job["images"]] == ["x.png", "passwd"]
    service.wait_job(job["job_id"])
    keys = set(objects(service, service.settings.input_bucket, ""))
    assert f"{job['job_id']}/{job['images'][0]['id']}.pack" in keys
    assert not any(".." in key or "x.png" in key or "passwd" in key for key in keys)


@pytest.fixture(scope="module")
def no_workers(local_aws, tmp_path_factory):
    """A stack with its web tier but no worker: messages wait in the queue."""
    from daas.stack import Stack
    from tests.conftest import Service, make_settings

    tmp = tmp_path_factory.mktemp("no-workers")
    with Stack(make_settings(local_aws, tmp, result_timeout=1.0), log_dir=tmp / "logs") as stack:
        yield Service(stack, stack.start_web())


def test_without_workers_a_job_stays_queued_and_classify_times_out_with_504(no_workers):
    job = no_workers.submit([("wait.jpg", jpeg())]).json()
    status = no_workers.http.get(f"{no_workers.url}/api/jobs/{job['job_id']}").json()
    assert status["status"] == "queued" and status["images"][0]["status"] == "queued"
    response = no_workers.http.post(no_workers.url + "/classify", files={"myfile": ("late.jpg", jpeg())})
    assert response.status_code == 504 and "stays queued" in response.text


def test_a_poison_message_ends_as_an_error_not_an_endless_retry(no_workers):
    """A message whose worker dies on every delivery is dead-lettered by SQS after max_receives
    deliveries; the controller's reaper turns it into error results for the job, except where the
    chunk's results were stored before the worker died."""
    from daas import control

    cfg = no_workers.settings
    sqs, url = aws.client("sqs", cfg), aws.queue_url(cfg, cfg.queue)
    sqs.purge_queue(QueueUrl=url)
    poison = no_workers.submit([("poison.jpg", jpeg()), ("sent-with-it.jpg", jpeg())]).json()
    stored = no_workers.submit([("labelled.jpg", jpeg())]).json()
    # This worker stored the chunk's results, then died before deleting the message.
    labelled = stored["images"][0]
    storage.put_results(cfg, stored["job_id"], [results.error(stored["job_id"], labelled["id"], labelled["name"], "kept")])
    for _ in range(cfg.max_receives):  # each delivery "dies": never deleted, visible again at once
        got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5, VisibilityTimeout=0, MaxNumberOfMessages=10)
        assert len(got.get("Messages", [])) == 2, "the messages should be redelivered until they are dead-lettered"
    assert not sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages")
    assert control.reap(cfg) == 2
    assert no_workers.wait_job(stored["job_id"], timeout=10)["images"][0]["error"] == "kept"
    done = no_workers.wait_job(poison["job_id"], timeout=10)
    assert [image["status"] for image in done["images"]] == ["error", "error"]
    assert all(f"{cfg.max_receives} attempts failed" in image["error"] for image in done["images"])


def test_a_batched_forward_pass_labels_each_image_and_reports_bad_ones(no_workers):
    """The GPU path (one forward pass for a task's images) run on CPU: same labels, per-image errors."""
    from daas import pipeline

    cfg = no_workers.settings
    photos = [("coffee.png", skimage_photo("coffee.png")), ("cut.jpg", jpeg((400, 400))[:1500]),
              ("camera.png", skimage_photo("camera.png"))]
    group = [[f"img{i}", name] for i, (name, _) in enumerate(photos)]
    sizes = [len(data) for _, data in photos]
    storage.put_pack(cfg, storage.pack_key("batchjob", "img0"), [data for _, data in photos], sizes)
    spans = [[sum(sizes[:i]), size] for i, size in enumerate(sizes)]
    documents = pipeline.classify_chunk(cfg, "batchjob", group, batch=3, pack=["img0", spans])
    assert [d["id"] for d in documents] == ["img0", "img1", "img2"]
    assert [d["label"] for d in documents] == ["espresso", None, "tripod"]
    assert "truncated" in documents[1]["error"]
    assert set(documents[0]["timings_ms"]) == {"fetch", "decode", "forward"}
    # A message of a release before packs names no pack: each image is read from its own object.
    for (image_id, _), (_, data) in zip(group, photos):
        aws.client("s3", cfg).put_object(Bucket=cfg.input_bucket, Key=storage.image_key("batchjob", image_id), Body=data)
    assert [d["label"] for d in pipeline.classify_chunk(cfg, "batchjob", group)] == ["espresso", None, "tripod"]


# -- an upload gone from the input bucket (issue 16) -------------------------------------------------
@pytest.mark.parametrize("codes, gone", [
    ([None, None], [False, False]),
    ([None, "NoSuchKey", None], [False, True, False]),     # S3's answer with s3:ListBucket on the bucket
    ([None, "AccessDenied", None], [False, True, False]),  # without it: its chunk-mates were fetched
    ([None, "404", "403"], [False, True, True]),
    (["NoSuchKey"], [True]),
    (["AccessDenied"], None),                              # nothing could be read: a permission problem
    (["AccessDenied", "AccessDenied"], None),
    (["NoSuchKey", "AccessDenied"], None),                 # no image fetched: no proof the 403 is a gone key
    ([None, "SlowDown"], None),                            # storage trouble: the chunk is tried again
    ([None, "InternalError", "AccessDenied"], None),
])
def test_a_403_means_an_image_is_gone_only_beside_images_that_were_fetched(codes, gone):
    from daas.pipeline import gone_images

    assert gone_images(codes) == gone


def test_a_pack_gone_from_the_input_bucket_fails_its_images_alone_and_a_refused_one_is_retried(local_aws, tmp_path):
    """Two jobs wait in the queue before the worker starts. The stack reaches the endpoint through
    a proxy (tests/aws_proxy.py) that answers as S3 does where moto cannot.

    - twenty images, two tasks, one task's pack deleted (expired), S3 says 404 (the worker may list
      the bucket): ten labels and ten errors that say what to do, at the first delivery;
    - two images whose GET S3 refuses with 403 (a real permission problem; without s3:ListBucket,
      also a gone key, which one object per chunk cannot tell apart): the chunk fails, SQS delivers
      it again until it is dead-lettered, and no image of it gets an error written by the worker."""
    from daas.stack import Stack
    from tests.aws_proxy import AwsProxy, Rule
    from tests.conftest import Service, make_settings, wait_for
    from tests.test_delivery import dead_letters, task_lines

    with AwsProxy(local_aws) as proxy:
        settings = make_settings(proxy.url, tmp_path, visibility_timeout=1)
        with Stack(settings, log_dir=tmp_path / "logs") as stack:
            service = Service(stack, stack.start_web())
            photo = skimage_photo("coffee.png")
            not_found = service.submit([(f"{i}.png", photo) for i in range(20)]).json()
            refused = service.submit([("a.png", photo), ("b.png", photo)]).json()
            aws.client("s3", settings).delete_object(
                Bucket=settings.input_bucket, Key=storage.pack_key(not_found["job_id"], not_found["images"][10]["id"]))
            proxy.add(Rule("GET", f"/{settings.input_bucket}/{refused['job_id']}/", deny="all"))
            stack.start_worker()

            images = service.wait_job(not_found["job_id"])["images"]
            assert [image["label"] for image in images[:10]] == ["espresso"] * 10
            assert {(image["status"], image["error"]) for image in images[10:]} == {
                ("error", "the uploaded image is no longer in the input bucket; please upload it again")}
            wait_for(lambda: dead_letters(settings) == 1, 60, "the refused chunk in the dead-letter queue")
            status = service.http.get(f"{service.url}/api/jobs/{refused['job_id']}").json()
            assert [image["status"] for image in status["images"]] == ["queued", "queued"]
            # Both tasks of the first job succeeded at their first delivery; the refused one was tried 3 times.
            assert len(task_lines(tmp_path / "logs", "succeeded")) == 2
            assert len(task_lines(tmp_path / "logs", "received")) == 2 + settings.max_receives
