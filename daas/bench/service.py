"""Service, single and burst: the same images through the web tier with warm workers, in turn
with raw on the same cores (ABBA rounds)."""
from __future__ import annotations

import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import requests

from daas import config, runtimes
from daas.bench.harness import BEFORE, RAW_RUNTIMES, cores_cpu_s, on_cores, percentiles
from daas.bench.measure import BATCH, classify_all
from daas.bench.raw import raw_pool, raw_run, raw_single
from daas.bench.stacks import stack, start_workers
from daas.bench.workload import File, cycle


# Raw and service alternate, ROUNDS runs each, and each reports its median run: on this shared VM
# single runs of the same code gave service/raw from 0.87 to 0.96 within the hour.
ROUNDS = 5
BURST_ROUNDS = 3


def service_run(url: str, files: list[File], count: int) -> dict:
    """images/s and latency of `count` images through the web tier (workers already warm)."""
    run = classify_all(url, cycle(files, count))
    stages = {}
    for result in run.results:
        for stage, ms in result["timings_ms"].items():
            stages.setdefault(stage, []).append(ms)
    return {"images": count, "batch": BATCH, "seconds": round(run.seconds, 3),
            "images_per_s": round(run.steady_images_per_s, 3),
            "end_to_end_images_per_s": round(run.images_per_s, 3),
            "first_label_s": round(run.first_label - run.started, 3), "latency_ms": percentiles(run.latencies),
            "stages_mean_ms": {stage: round(sum(v) / len(v), 2) for stage, v in stages.items()},
            "latencies_ms": [round(t * 1000, 1) for t in run.latencies]}


def median_run(runs: list[dict]) -> dict:
    """The run with the median images/s, with every run's images/s beside it."""
    middle = sorted(runs, key=lambda run: run["images_per_s"])[len(runs) // 2]
    return {**middle, "images_per_s_runs": [run["images_per_s"] for run in runs]}


def single_mode(url: str, files: list[File], count: int) -> dict:
    """POST /classify one image at a time (the original synchronous contract)."""
    http = requests.Session()

    def classify(name: str, data: bytes) -> float:
        started = time.perf_counter()
        response = http.post(f"{url}/classify", files={"myfile": (name, data)}, timeout=120)
        if response.status_code != 200:
            raise RuntimeError(f"/classify {name}: {response.status_code} {response.text.strip()}")
        return time.perf_counter() - started

    classify(*files[0])  # warm-up
    latencies = [classify(name, data) for name, data in cycle(files, count)]
    return {"images": count, "latency_ms": percentiles(latencies),
            "latencies_ms": [round(t * 1000, 2) for t in latencies]}


# -- burst: the original client's pattern, beside the same images as one upload --------------------

BURST = 100  # concurrent POST /classify, one image each, as the original load generator sent them
# One line of the local endpoint's access log (daas.serving.AWS_ACCESS_LOG_FORMAT).
_ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" \d+ \S+ \S+ "(?P<target>[^"]*)" "(?P<agent>[^"]*)"')


def aws_requests(log: Path, since: int) -> Counter:
    """The AWS calls logged by the local endpoint after byte `since` of its log, by caller and
    operation: ("web", "AmazonSQS.SendMessage"), ("worker", "s3 GET"), ("kombu", ...)."""
    counts: Counter = Counter()
    with open(log, "rb") as handle:
        handle.seek(since)
        for line in handle.read().decode(errors="replace").splitlines():
            match = _ACCESS_LINE.search(line)
            if not match:
                continue
            role = re.search(r"daas/(\w+)", match["agent"])
            operation = match["target"] if match["target"] != "-" else (
                f"s3 {match['method']}" if match["path"] != "/" else "query POST (SNS, EC2)")
            counts[(role[1] if role else "kombu", operation)] += 1
    return counts


def _per_image(counts: Counter, images: int) -> dict:
    return {"per_image": round(sum(counts.values()) / images, 2),
            "by_operation": {f"{role} {op}": round(n / images, 3) for (role, op), n in counts.most_common()}}


def burst_mode(url: str, files: list[File], log: Path, count: int = BURST) -> dict:
    """`count` threads, each POSTing one image to /classify at once; images/s from the first
    request to the last answer, and the AWS calls per image."""
    since = log.stat().st_size

    def classify(file: File) -> float:
        started = time.perf_counter()
        response = requests.post(f"{url}/classify", files={"myfile": file}, timeout=300)
        if response.status_code != 200:
            raise RuntimeError(f"/classify {file[0]}: {response.status_code} {response.text.strip()}")
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        latencies = list(pool.map(classify, cycle(files, count)))
    seconds = time.perf_counter() - started
    time.sleep(1)  # the workers' last deletes and events reach the log
    return {"images": count, "seconds": round(seconds, 3), "images_per_s": round(count / seconds, 3),
            "latency_ms": percentiles(latencies), "aws_requests": _per_image(aws_requests(log, since), count)}


def one_upload_mode(url: str, files: list[File], log: Path, count: int = BURST) -> dict:
    """The same images as one POST /api/jobs, followed as the web page does: images/s from the
    upload to the last label, and the AWS calls per image."""
    since = log.stat().st_size
    run = classify_all(url, cycle(files, count), batch=count)
    time.sleep(1)
    return {"images": count, "seconds": round(run.seconds, 3), "images_per_s": round(run.images_per_s, 3),
            "latency_ms": percentiles(run.latencies), "aws_requests": _per_image(aws_requests(log, since), count)}


def raw_and_service(base: config.Settings, tmp: Path, name: str, files: list[File], count: int,
                    workers: int, cores: set[int], single: int = 0, burst: int = BURST,
                    rounds: int = ROUNDS, compare: bool = False) -> dict:
    """Raw and service in turn, `rounds` times each, with `workers` processes on `cores` (the raw
    processes idle while the workers run, and the other way round); then single, when asked.
    Each mode reports its median run.

    With `compare`, raw runs on every runtime (RAW_RUNTIMES) and "raw" is the fastest of them (the
    honest limit), and a second stack on PyTorch (the runtime before issue 18) runs its service
    beside ours. The steps of a round run in one order and the next round's in the reverse (ABBA):
    this VM's speed drifts by 1.3-1.6× between identical runs."""
    settings = base.with_(scale_max=workers)
    default = runtimes.resolve(settings)[0]
    raw_runtimes = RAW_RUNTIMES if compare else (default,)
    service_runtimes = tuple(dict.fromkeys((default, BEFORE))) if compare else (default,)
    with ExitStack() as context:
        print(f"{name}: {workers} raw processes per runtime ({', '.join(raw_runtimes)}) and {workers} workers "
              f"per service ({', '.join(service_runtimes)}) on cores {sorted(cores)}…", flush=True)
        pools, urls = {}, {}
        with on_cores(cores):
            for runtime in raw_runtimes:
                pools[runtime] = context.enter_context(raw_pool(settings.with_(runtime=runtime), files))
        for runtime in service_runtimes:
            running, urls[runtime] = context.enter_context(
                stack(base, tmp, name if runtime == default else f"{name}-pt", idle_timeout=0, scale_max=workers,
                      runtime=runtime))
            with on_cores(cores):
                start_workers(running, workers)
            classify_all(urls[runtime], cycle(files, 2 * workers * settings.images_per_task))  # warm-up: a few tasks each
        steps = [("raw", runtime) for runtime in raw_runtimes] + [("service", runtime) for runtime in service_runtimes]
        runs: dict[tuple[str, str], list[dict]] = {step: [] for step in steps}
        for round_ in range(1, rounds + 1):
            order = steps if round_ % 2 else steps[::-1]
            print(f"{name}: round {round_} of {rounds}: {', '.join(f'{k} ({r})' for k, r in order)}, "
                  f"{count} images each…", flush=True)
            for kind, runtime in order:
                cpu = cores_cpu_s(cores)
                run = raw_run(pools[runtime], files, count) if kind == "raw" else service_run(urls[runtime], files, count)
                # Split, the worker cores run nothing else: their CPU per image is the workers' (or raw's)
                # own cost. Colocated, it is everything's, the endpoint and web tier included.
                run["cores_cpu_ms_per_image"] = round((cores_cpu_s(cores) - cpu) * 1000 / count, 2)
                runs[(kind, runtime)].append(run)
        raws = {runtime: {"processes": workers, "runtime": runtime, **median_run(runs[("raw", runtime)])}
                for runtime in raw_runtimes}
        modes = {"raw": max(raws.values(), key=lambda mode: mode["images_per_s"]),
                 "service": {"workers": workers, "runtime": default, **median_run(runs[("service", default)])}}
        if compare:
            modes["raw_runtimes"] = raws
            modes["service_before"] = {"workers": workers, "runtime": BEFORE, **median_run(runs[("service", BEFORE)])}
        if single:
            pool, url = pools[modes["raw"]["runtime"]], urls[default]
            print(f"{name}: single, {single} images through /classify and raw…", flush=True)
            modes["raw"]["single"] = raw_single(pool, files, single)
            modes["single"] = single_mode(url, files, single)
            log = tmp / "aws" / "aws.log"  # the local endpoint's access log (see local_aws)
            print(f"{name}: {burst} concurrent /classify, then the same images as one upload, in turn…", flush=True)
            bursts, uploads = [], []
            for _ in range(max(1, rounds * BURST_ROUNDS // ROUNDS)):
                bursts.append(burst_mode(url, files, log, burst))
                uploads.append(one_upload_mode(url, files, log, burst))
            modes["burst"], modes["one_upload"] = median_run(bursts), median_run(uploads)
    return modes
