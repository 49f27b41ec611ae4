"""`python -m daas bench` (all): every mode on the same images, the ratios against the targets,
bench.json and bench.png (README: Performance)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from daas import runtimes
from daas.bench.harness import WORKERS_PER_CORE, machine, on_cores, split_cores, workspace
from daas.bench.measure import BATCH, POLL_S
from daas.bench.service import BURST, ROUNDS, raw_and_service
from daas.bench.stacks import ELASTIC_IDLE_S, bake_model, local_aws
from daas.bench.stages import stages_mode
from daas.bench.starts import baseline_mode, boot_mode, cold_mode
from daas.bench.workload import build_images


TARGETS = {  # name: (comparison, threshold, unit)
    "service / raw": (">=", 0.9, "×"),
    "service / baseline": (">=", 20.0, "×"),
    "service / PyTorch service": (">=", 2.0, "×"),
    "single − raw (p50)": ("<=", 50.0, "ms"),
    "cold 30 images": ("<=", 10.0, "s"),
    "burst / one upload": (">=", 0.8, "×"),
    "burst AWS calls per image beyond the upload's": ("<=", 3.0, ""),
}


def service_over_raw(modes: dict) -> float:
    return round(modes["service"]["images_per_s"] / modes["raw"]["images_per_s"], 3)


def ratios(modes: dict) -> dict[str, float]:
    return {
        "service / raw": service_over_raw(modes),
        "service / baseline": round(modes["service"]["images_per_s"] / modes["baseline"]["images_per_s"], 1),
        "service / PyTorch service": round(modes["service"]["images_per_s"] / modes["service_before"]["images_per_s"], 2),
        "single − raw (p50)": round(modes["single"]["latency_ms"]["p50"]
                                    - modes["raw"]["single"]["latency_ms"]["p50"], 1),
        "cold 30 images": modes["cold"]["seconds"],
        "service / raw, colocated": service_over_raw(modes["colocated"]),
        "burst / one upload": round(modes["burst"]["images_per_s"] / modes["one_upload"]["images_per_s"], 3),
        "burst AWS calls per image beyond the upload's": round(
            modes["burst"]["aws_requests"]["per_image"] - modes["one_upload"]["aws_requests"]["per_image"], 2),
    }


def judge(figures: dict[str, float]) -> list[dict]:
    checks = []
    for name, (op, threshold, unit) in TARGETS.items():  # the colocated ratio is reported, not judged
        value = figures[name]
        met = value >= threshold if op == ">=" else value <= threshold
        checks.append({"name": name, "value": value, "target": f"{'≥' if op == '>=' else '≤'} {threshold:g} {unit}",
                       "met": met})
    return checks


def run_all(out: Path, count: int = 120, *, workers: int | None = None, single: int | None = None,
            baseline_sample: int = 5, cold_images: int = 30, burst: int = BURST, rounds: int = ROUNDS) -> dict:
    """Every mode of `bench` on `count` images; writes <out>/bench.json and <out>/bench.png.
    `workers`: processes of raw and service (default: WORKERS_PER_CORE per worker core)."""
    out.mkdir(parents=True, exist_ok=True)
    single = single or min(count, 30)
    front, back = split_cores()
    everywhere = front | back
    workers = workers or WORKERS_PER_CORE * len(back)
    with workspace() as tmp, on_cores(front):
        files = build_images(tmp / "images")
        with local_aws(tmp) as base:
            report = {"machine": machine(base), "settings": {
                "workers": workers, "front_cores": sorted(front), "worker_cores": sorted(back),
                "inference_threads": base.inference_threads, "events": base.events,
                "runtime": runtimes.resolve(base)[0], "precision": base.precision,
                "prefetch_multiplier": base.prefetch_multiplier, "batch": BATCH, "poll_s": POLL_S,
                "cold": {"workers_max": base.scale_max, "scale_interval_s": 1.0, "idle_timeout_s": ELASTIC_IDLE_S},
                "images": count, "distinct_images": [{"name": n, "bytes": len(d)} for n, d in files]}}
            export_s = bake_model(base)
            with on_cores(back):
                print("stages and boot: per-image stages and a worker's start on each runtime…", flush=True)
                stages = stages_mode(base, files)
                boots = boot_mode(base, tmp / "images" / files[0][0])
            modes = raw_and_service(base, tmp, "service", files, count, workers, back, single, burst, rounds,
                                    compare=True)
            modes["stages"], modes["boot"], modes["export_s"] = stages, boots, export_s
            modes["colocated"] = raw_and_service(base, tmp, "colocated", files, count, workers, everywhere,
                                                 rounds=rounds)
            with on_cores(everywhere):
                print(f"baseline: {baseline_sample} processes, one per image…", flush=True)
                modes["baseline"] = baseline_mode(base, tmp / "images", files, baseline_sample)
                print(f"cold: {cold_images} images from zero workers…", flush=True)
                modes["cold"] = cold_mode(base, tmp, files, cold_images)
        report["modes"] = modes
        report["ratios"] = ratios(modes)
        report["targets"] = judge(report["ratios"])
        report["machine"]["load_average_at_end"] = os.getloadavg()
    (out / "bench.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    plot_bench(report, out / "bench.png")
    return report


def _ms(figures: dict) -> tuple[str, str]:
    return f"{figures['p50']:.0f}", f"{figures['p95']:.0f}"


def _runs(mode: dict) -> str:
    return "/".join(f"{rate:.1f}" for rate in mode["images_per_s_runs"])


def _row(label: str, rate: str = "", p50: str = "", p95: str = "", note: str = "") -> str:
    return f"{label:<42}{rate:>10}{p50:>10}{p95:>10}{note}"


def format_report(report: dict) -> str:
    m, s, modes = report["machine"], report["settings"], report["modes"]
    raw, service, single, baseline, cold = (modes[k] for k in ("raw", "service", "single", "baseline", "cold"))
    colocated = modes["colocated"]
    stages = ", ".join(f"{k} {v:.0f}" for k, v in service["stages_mean_ms"].items())
    worker_cores = f"worker core(s) {','.join(map(str, s['worker_cores']))}"
    lines = [
        (f"{m['cpu']} ({m['cores']} cores), {m['inference_threads']} inference thread(s) per process, "
         f"service runtime {s['runtime']} (precision {s['precision']}), "
         + ", ".join(f"{name} {m[name]}" for name in ("openvino", "onnxruntime", "torch", "celery", "kombu"))),
        (f"{s['images']} images ({len(s['distinct_images'])} distinct), {s['workers']} worker processes on "
         f"{worker_cores}; AWS endpoint, web tier and client on core(s) {','.join(map(str, s['front_cores']))}"),
        "",
        _row("mode", "images/s", "p50 ms", "p95 ms"),
        *(_row(f"raw on {name}: model alone, {mode['processes']} processes", f"{mode['images_per_s']:.2f}",
               *_ms(mode["busy_ms_per_image"]), "  (the fastest: raw)" if mode is raw else "")
          for name, mode in modes["raw_runtimes"].items()),
        _row("raw: one image at a time", "", *_ms(raw["single"]["latency_ms"])),
        _row(f"service: API, {service['workers']} warm workers", f"{service['images_per_s']:.2f}",
             *_ms(service["latency_ms"]), f"  (end to end {service['end_to_end_images_per_s']:.2f}/s, "
                                          f"first label {service['first_label_s']:.2f} s)"),
        _row(f"service on {modes['service_before']['runtime']} (before issue 18)",
             f"{modes['service_before']['images_per_s']:.2f}", *_ms(modes["service_before"]["latency_ms"])),
        _row("single: POST /classify, one at a time", "", *_ms(single["latency_ms"])),
        _row(f"burst: {modes['burst']['images']} concurrent POST /classify", f"{modes['burst']['images_per_s']:.2f}",
             *_ms(modes["burst"]["latency_ms"]), f"  ({modes['burst']['aws_requests']['per_image']} AWS calls/image)"),
        _row(f"one upload: the same {modes['one_upload']['images']} images", f"{modes['one_upload']['images_per_s']:.2f}",
             *_ms(modes["one_upload"]["latency_ms"]),
             f"  ({modes['one_upload']['aws_requests']['per_image']} AWS calls/image)"),
        _row("colocated raw: on all cores", f"{colocated['raw']['images_per_s']:.2f}",
             *_ms(colocated["raw"]["busy_ms_per_image"])),
        _row("colocated service: everything on all cores", f"{colocated['service']['images_per_s']:.2f}",
             *_ms(colocated["service"]["latency_ms"])),
        _row("baseline: a process per image", f"{baseline['images_per_s']:.3f}", f"{baseline['mean_s'] * 1000:.0f}"),
        _row(f"cold: {cold['images']} images from zero workers", f"{cold['images_per_s']:.2f}", "", "",
             f"  ({cold['seconds']:.1f} s, first label {cold['first_label_s']:.1f} s)"),
        f"service stages, mean ms per image: {stages}",
        f"CPU of the worker cores per image (median run): raw {raw['cores_cpu_ms_per_image']:.2f} ms, "
        f"service {service['cores_cpu_ms_per_image']:.2f} ms",
        "stages in one process, mean ms per image: " + ", ".join(f"{k} {v:g}" for k, v in modes["stages"].items()),
        "worker start (load the model, label one image; median): " + ", ".join(
            f"{name} {b['seconds']:.2f} s, {b['resting_rss_mb']} MB{' (imports torch)' if b['torch_imported'] else ''}"
            for name, b in modes["boot"].items()) + f"; the export, once: {modes['export_s']:.1f} s",
        ("runs in turn (images/s; the medians above): "
         + ", ".join(f"raw {name} {_runs(mode)}" for name, mode in modes["raw_runtimes"].items())
         + f", service {_runs(service)}, service {modes['service_before']['runtime']} {_runs(modes['service_before'])}; "
         f"colocated raw {_runs(colocated['raw'])}, service {_runs(colocated['service'])}"),
        "",
        f"{'figure':<46}{'value':>11}  {'target':<12}",
    ]
    units = {"service / raw": "×", "service / baseline": "×", "service / PyTorch service": "×", "single − raw (p50)": " ms", "cold 30 images": " s",
             "service / raw, colocated": "×", "burst / one upload": "×", "burst AWS calls per image beyond the upload's": ""}
    checks = {check["name"]: check for check in report["targets"]}
    for name, value in report["ratios"].items():
        check = checks.get(name)
        target, verdict = (check["target"], "met" if check["met"] else "NOT met") if check else ("", "(reported)")
        lines.append(f"{name:<46}{f'{value:g}{units[name]}':>11}  {target:<12}{verdict}")
    return "\n".join(lines)


def plot_bench(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = report["modes"]
    fig, (rate_ax, latency_ax) = plt.subplots(1, 2, figsize=(15, 4.8), width_ratios=(4, 2))
    colocated = modes["colocated"]
    names = [f"raw\n{modes['raw']['runtime']}", f"service\n{modes['service']['runtime']}",
             f"service\n{modes['service_before']['runtime']}",
             f"burst\n{modes['burst']['images']} ×\n/classify", f"one upload\n{modes['one_upload']['images']}\nimages",
             "raw\ncolocated", "service\ncolocated", f"cold\n{modes['cold']['images']} from 0",
             "baseline\n1 process\nper image"]
    rates = [modes["raw"]["images_per_s"], modes["service"]["images_per_s"], modes["service_before"]["images_per_s"],
             modes["burst"]["images_per_s"],
             modes["one_upload"]["images_per_s"], colocated["raw"]["images_per_s"],
             colocated["service"]["images_per_s"], modes["cold"]["images_per_s"], modes["baseline"]["images_per_s"]]
    bars = rate_ax.bar(names, rates, color=["tab:gray", "tab:blue", "tab:orange", "tab:purple", "plum", "silver", "lightsteelblue",
                                            "tab:cyan", "tab:red"])
    rate_ax.bar_label(bars, fmt="%.2f")
    rate_ax.set_ylabel("images / s")
    rate_ax.set_title("throughput")

    groups = [("raw, 1 image", modes["raw"]["single"]["latency_ms"]),
              ("single\n/classify", modes["single"]["latency_ms"]),
              (f"service\nupload→label ({modes['service']['images']})", modes["service"]["latency_ms"])]
    x = range(len(groups))
    width = 0.38
    for offset, key, color in ((-width / 2, "p50", "tab:blue"), (width / 2, "p95", "tab:orange")):
        bars = latency_ax.bar([i + offset for i in x], [g[1][key] for g in groups], width, label=key, color=color)
        latency_ax.bar_label(bars, fmt="%.0f", fontsize=8)
    latency_ax.set_xticks(list(x), [g[0] for g in groups])
    latency_ax.set_yscale("log")
    latency_ax.set_ylabel("ms (log scale)")
    latency_ax.set_title("latency percentiles")
    latency_ax.legend()
    m = report["machine"]
    fig.suptitle(f"daas bench: {m['cpu']}, {m['cores']} cores, runtime {report['settings']['runtime']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


OUTPUTS = ("bench.json", "bench.png")  # what run_from writes in its folder


def run_from(args: argparse.Namespace, out: Path) -> dict:
    """The report of `python -m daas bench all` (daas.bench.main prints it)."""
    return run_all(out, args.images)
