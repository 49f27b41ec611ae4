"""`python -m daas bench scaling`: batches of 10, 30 and 100 images on an elastic stack (from zero
workers each time) against one fixed warm worker; scaling.json and scaling.png (README: Elastic vs
fixed)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from daas import state, timeline
from daas.bench.harness import machine, workspace
from daas.bench.measure import BATCH, POLL_S, classify_all
from daas.bench.stacks import (ELASTIC_IDLE_S, bake_model, elastic_stack, local_aws, stack, start_workers,
                               wait_for_zero_workers)
from daas.bench.starts import elastic_run
from daas.bench.workload import build_images, cycle


def run_scaling(out: Path, sizes: tuple[int, ...] = (10, 30, 100), plot_size: int = 30) -> dict:
    """Elastic (0..N workers, from zero each time) against one fixed warm worker, per batch size."""
    out.mkdir(parents=True, exist_ok=True)
    with workspace() as tmp:
        files = build_images(tmp / "images")
        with local_aws(tmp) as base:
            bake_model(base)
            report = {"machine": machine(base), "settings": {
                "elastic": {"min": 0, "max": base.scale_max, "scale_interval_s": 1.0, "idle_timeout_s": ELASTIC_IDLE_S},
                "fixed_workers": 1, "inference_threads": base.inference_threads, "events": base.events,
                "batch": BATCH, "poll_s": POLL_S}}
            elastic, records = {}, []
            with elastic_stack(base, tmp, "elastic") as (running, url):
                for size in sizes:
                    print(f"elastic: {size} images from zero workers…", flush=True)
                    elastic[size] = elastic_run(running, url, cycle(files, size))
                    if size == plot_size:  # its timeline, until the workers are gone again
                        wait_for_zero_workers(running.settings)
                        records = timeline.read(running.settings.state_dir, since=elastic[size]["since"])
                    elastic[size].pop("since")
                # What the controller watched: each worker's launch to its first heartbeat (daas.observed)
                report["observed_boots_s"] = state.read_json(running.settings.state_dir / "scaling.json", {}).get("boots", [])
            fixed = {}
            with stack(base, tmp, "fixed", idle_timeout=0) as (running, url):
                start_workers(running, 1)
                classify_all(url, files[:2])  # warm-up
                for size in sizes:
                    print(f"fixed: {size} images, one warm worker…", flush=True)
                    run = classify_all(url, cycle(files, size))
                    fixed[size] = {"images": size, "seconds": round(run.seconds, 3),
                                   "images_per_s": round(run.images_per_s, 3)}
        report["runs"] = [{"images": size, "elastic": elastic[size], "fixed": fixed[size]} for size in sizes]
        report["timeline"] = records
        report["machine"]["load_average_at_end"] = os.getloadavg()
    (out / "scaling.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    if records:
        timeline.plot(records, out / "scaling.png", title=f"daas autoscaling: {plot_size} images from zero workers")
    return report


def format_report(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    lines = [f"{m['cpu']} ({m['cores']} cores), {m['inference_threads']} inference thread(s) per worker",
             "",
             (f"{'images':>7}  {'elastic 0→' + str(s['elastic']['max']) + ' workers':>22}"
              f"  {'fixed: 1 warm worker':>22}  {'peak workers':>12}")]
    for run in report["runs"]:
        e, f = run["elastic"], run["fixed"]
        lines.append(f"{run['images']:>7}  {e['seconds']:>8.1f} s ({e['images_per_s']:>5.1f}/s)"
                     f"  {f['seconds']:>8.1f} s ({f['images_per_s']:>5.1f}/s)  {e['peak_workers']:>12}")
    return "\n".join(lines)


OUTPUTS = ("scaling.json", "scaling.png")  # what run_from writes in its folder


def run_from(args: argparse.Namespace, out: Path) -> dict:
    """The report of `python -m daas bench scaling` (daas.bench.main prints it)."""
    return run_scaling(out)
