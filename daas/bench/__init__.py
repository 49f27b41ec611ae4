"""Benchmarks, all measured in one run on this machine: `python -m daas bench [WHICH]`, one module
of this package each (BENCHMARKS).

`all` compares five ways of labelling the same images:
  raw       the model alone (decode + preprocess + forward) in N processes, as the workers run it, on
            each inference runtime; "raw" is the fastest of them
  service   the same images through the web API, N warm workers: images/s at steady state (first
            label to last; end to end is reported too) and upload-to-label latency; on the default
            runtime, and on PyTorch (every release before issue 18) in the same run
  single    one image at a time through POST /classify, against the model alone on one image
  baseline  the original app tier: a new Python process per image that loads the model
  cold      30 images through a stack with zero workers, which the autoscaler has to start
plus, on each runtime, a worker's start (time and memory) and each stage's ms per image,
and writes <out>/bench.json and <out>/bench.png. `scaling` times batches of 10, 30 and 100 images
on an elastic stack (from zero workers each time) against one fixed warm worker, and writes
<out>/scaling.json and <out>/scaling.png (the autoscaler's timeline of the elastic 30-image run).
`soak` runs the whole stack for a while under load and injected faults (daas/bench/soak.py).

Raw and service are compared on the same cores. The machine's cores are split: the worker cores
run the N worker processes (and, in turn, the N raw processes); the front cores run what on AWS
runs elsewhere: the local AWS endpoint (S3, SQS and SNS are AWS's CPU there), the web tier (its own
instance there) and this client. N is WORKERS_PER_CORE solo workers per worker core: a solo worker
waits on S3 and SQS for part of each task, and the others compute meanwhile. The same comparison with
every process free to run on every core is reported too ("colocated"). Each process runs
DAAS_INFERENCE_THREADS threads. Baseline and cold run on all cores.

Every stack runs on free ports with its own buckets, queues and state folder, all on one local
AWS endpoint started once for the whole run.

The modules: `performance` (all) and `scaling`, `soak`, `batch`, `simulate`, `gpu`, each with its
`run_from(args, out)` (see main); what they share: `workload` (the images), `harness` (workspace, machine, cores),
`stacks` (the local endpoint and the stacks on it), `measure` (upload and wait for every label);
the modes of `all`: `raw`, `service` (with single and burst), `starts` (baseline, boot, cold),
`stages`.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

# `python -m daas bench WHICH`: the module of this package that runs it
BENCHMARKS = {"all": "performance", "scaling": "scaling", "soak": "soak", "batch": "batch",
              "simulate": "simulate", "gpu": "gpu"}


def main(args: argparse.Namespace) -> int:
    """Run the benchmark `args.which` names, print its report and the files it wrote. Each module of
    BENCHMARKS has `run_from(args, out)` (the report), `format_report(report)` and OUTPUTS (the files
    it writes); one with `passed(report)` (the soak) fails the command where that is false."""
    module = importlib.import_module(f"daas.bench.{BENCHMARKS[args.which]}")
    out = Path(args.out)
    report = module.run_from(args, out)
    print(module.format_report(report))
    print(f"\nwrote {' and '.join(str(out / name) for name in module.OUTPUTS)}")
    return 0 if getattr(module, "passed", lambda _: True)(report) else 1
