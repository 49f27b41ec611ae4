"""The benchmark machinery end to end on a tiny run: every mode measured, ratios, JSON and plot."""
import json
import os

import pytest

from daas.bench import harness, measure, performance


def test_bench_all_on_four_images(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAAS_SCALE_MAX", "1")  # one worker process: keeps the test quick on 2 cores
    report = performance.run_all(tmp_path, 4, workers=1, baseline_sample=1, cold_images=3, burst=5, rounds=3)

    written = json.loads((tmp_path / "bench.json").read_text())
    assert written == json.loads(json.dumps(report))
    modes = written["modes"]
    assert set(modes) == {"raw", "raw_runtimes", "service", "service_before", "single", "baseline", "cold",
                          "colocated", "burst", "one_upload", "stages", "boot", "export_s"}
    # "raw" is the fastest runtime's; the service runs on the default runtime and on PyTorch beside it
    assert set(modes["raw_runtimes"]) == {"openvino", "onnxruntime", "torch"}
    assert modes["raw"] == max(modes["raw_runtimes"].values(), key=lambda mode: mode["images_per_s"]) | {
        "single": modes["raw"]["single"]}
    assert modes["service"]["runtime"] == "openvino" and modes["service_before"]["runtime"] == "torch"
    for runtime, boot in modes["boot"].items():  # only the torch runtime imports torch to serve
        assert boot["label"] == modes["raw"]["labels"][0] and boot["torch_imported"] == (runtime == "torch")
        assert boot["resting_rss_mb"] > 0 and len(boot["seconds_runs"]) == 3
    assert {"decode", "prepare", "prepare_before", "forward_openvino", "forward_onnxruntime",
            "forward_torch"} == set(modes["stages"]) and all(v > 0 for v in modes["stages"].values())
    for mode in (modes["burst"], modes["one_upload"]):  # the original client's pattern, and one upload
        assert mode["images"] == 5 and mode["images_per_s"] > 0 and mode["aws_requests"]["per_image"] > 1
        assert any(op.startswith("web ") for op in mode["aws_requests"]["by_operation"])
    for mode in (modes["raw"], modes["service"], modes["baseline"], modes["cold"], *modes["colocated"].values()):
        assert mode["images_per_s"] > 0, mode
    assert modes["raw"]["processes"] == modes["service"]["workers"] == modes["colocated"]["service"]["workers"] == 1
    for mode in (modes["raw"], modes["service"], modes["service_before"], *modes["raw_runtimes"].values(),
                 *modes["colocated"].values()):  # the median of the runs
        assert len(mode["images_per_s_runs"]) == 3
        assert mode["images_per_s"] == sorted(mode["images_per_s_runs"])[1]
        assert mode["cores_cpu_ms_per_image"] > 0  # the model alone costs CPU on the cores it ran on
    front, workers = written["settings"]["front_cores"], written["settings"]["worker_cores"]
    assert workers and front and (set(front).isdisjoint(workers) or front == workers)
    for latency in (modes["raw"]["single"]["latency_ms"], modes["single"]["latency_ms"],
                    modes["service"]["latency_ms"]):
        assert 0 < latency["p50"] <= latency["p95"]
    # The chunk's wait in the queue, then the worker's stages.
    assert set(modes["service"]["stages_mean_ms"]) == {"queue", "fetch", "decode", "forward"}
    service = modes["service"]
    assert service["end_to_end_images_per_s"] == pytest.approx(service["images"] / service["seconds"], rel=0.01)
    assert 0 < service["first_label_s"] < service["seconds"]
    assert len(modes["single"]["latencies_ms"]) == modes["single"]["images"] == 4
    assert modes["cold"]["seconds"] > 0 and modes["cold"]["peak_workers"] >= 1
    # The model's labels are the same without and with the service around it.
    assert all(modes["baseline"]["labels"]) and modes["baseline"]["labels"][0] == modes["raw"]["labels"][0]

    ratios = written["ratios"]
    assert ratios["service / raw"] == round(modes["service"]["images_per_s"] / modes["raw"]["images_per_s"], 3)
    assert ratios["service / baseline"] == round(modes["service"]["images_per_s"] / modes["baseline"]["images_per_s"], 1)
    assert ratios["service / PyTorch service"] == round(
        modes["service"]["images_per_s"] / modes["service_before"]["images_per_s"], 2)
    assert ratios["single − raw (p50)"] == round(
        modes["single"]["latency_ms"]["p50"] - modes["raw"]["single"]["latency_ms"]["p50"], 1)
    assert ratios["cold 30 images"] == modes["cold"]["seconds"]
    assert ratios["burst / one upload"] == round(
        modes["burst"]["images_per_s"] / modes["one_upload"]["images_per_s"], 3)
    assert ratios["service / raw, colocated"] == round(
        modes["colocated"]["service"]["images_per_s"] / modes["colocated"]["raw"]["images_per_s"], 3)
    assert [t["name"] for t in written["targets"]] == list(performance.TARGETS)
    assert all(isinstance(t["met"], bool) for t in written["targets"])
    assert written["machine"]["cores"] >= 1 and written["machine"]["torch"]

    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = performance.format_report(written)
    assert "service / baseline" in table and "met" in table and "colocated" in table
    assert "CPU of the worker cores per image" in table


def test_on_cores_pins_the_processes_started_inside():
    import subprocess
    import sys

    cores = sorted(os.sched_getaffinity(0))
    with harness.on_cores({cores[-1]}):
        child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                               capture_output=True, text=True, check=True)
    assert child.stdout.strip() == str([cores[-1]])
    assert sorted(os.sched_getaffinity(0)) == cores  # this thread has its cores back


def test_steady_rate_counts_from_the_first_label():
    run = measure.Run(started=0.0, first_label=1.0, finished=3.0, latencies=[1.0, 2.0, 3.0],
                    results=[{}, {}, {}])
    assert run.images_per_s == 1.0 and run.steady_images_per_s == 1.0  # 2 more labels in 2 s
    assert measure.Run(0.0, 2.0, 2.0, [2.0], [{}]).steady_images_per_s == 0.5  # one label: end to end


def test_bench_batch_on_a_small_bucket(tmp_path, monkeypatch):
    from daas.bench import batch

    monkeypatch.setattr(batch, "LISTING_SAMPLE", 100)  # the first 100 of the 150 keys listed on their own too
    report = batch.run(tmp_path, images=40, listing_keys=150, jobs_sample=10, workers=1)
    assert json.loads((tmp_path / "batch.json").read_text()) == json.loads(json.dumps(report))
    assert report["batch"]["images"] == 40 and report["batch"]["errors"] == 0
    assert report["batch"]["images_per_s"] > 0 and report["batch"]["enqueue_images_per_s"] > 0
    assert report["jobs"]["images"] == 10 and report["jobs"]["images_per_s"] > 0
    assert report["lister"]["40"]["enqueued"] == 40 and report["lister"]["150"]["enqueued"] == 150
    assert report["lister"]["100"]["enqueued"] == 100
    assert all(figures["peak_rss_mb"] > 0 for figures in report["lister"].values())
    assert "the lister alone over 150 keys" in batch.format_report(report)


def test_every_benchmark_runs_through_one_entry_point_and_a_failed_soak_fails_it(tmp_path, monkeypatch, capsys):
    import argparse
    import importlib

    from daas import bench
    from daas.bench import soak

    for name in bench.BENCHMARKS.values():  # what daas.bench.main asks of each benchmark's module
        module = importlib.import_module(f"daas.bench.{name}")
        assert callable(module.run_from) and callable(module.format_report) and module.OUTPUTS, name
    args = argparse.Namespace(which="soak", out=str(tmp_path), minutes=0.1, images=1)
    monkeypatch.setattr(soak, "run_from", lambda args, out: {"minutes": args.minutes, "out": out})
    monkeypatch.setattr(soak, "format_report", lambda report: f"soak of {report['minutes']} min")
    for verdict, status in ((True, 0), (False, 1)):
        monkeypatch.setattr(soak, "passed", lambda report: verdict)
        assert bench.main(args) == status
        printed = capsys.readouterr().out
        assert "soak of 0.1 min" in printed and f"wrote {tmp_path / 'soak.json'} and {tmp_path / 'soak.png'}" in printed
