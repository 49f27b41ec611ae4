"""`python -m daas COMMAND`: run the stack or one of its parts, classify files, benchmark."""
from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Iterable

from daas import config
from daas.bench import BENCHMARKS


def cmd_up(args: argparse.Namespace) -> int:
    """The whole stack on this machine: local AWS endpoint (unless --aws), web, controller, beat, Flower."""
    from daas import aws
    from daas.stack import Stack, ports_in_use, wait_for_http
    from daas.supervisor import Supervisor

    settings = config.load()
    busy = ports_in_use(settings, local_aws=not args.aws)
    if busy:
        print(f"daas: {'ports' if len(busy) > 1 else 'port'} {', '.join(busy)} in use: is another `daas up` still running (its processes: "
              f"{settings.state_dir / 'processes.json'})? Stop it, or set the variable to a free port.",
              file=sys.stderr)
        return 2
    settings, where = flower_credentials(settings)
    stack = Stack(settings, log_dir=settings.state_dir / "logs")
    # SIGTERM, and SIGHUP (the terminal closed): stop what we started. The children run in a process
    # group of their own, which a closing terminal does not reach.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(0))
    # Ctrl-C stops everything even when a shell started us in the background (which ignores SIGINT,
    # and Python then keeps ignoring it): a CI runner or `nohup … &` must not make `up` unstoppable.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if not args.aws:
            stack.start_local_aws()
        aws.ensure_resources(stack.settings)
        stack.start_controller()
        exporting = stack.start_model_export()
        web_url = stack.start_web()
        flower_url = stack.start_flower()
        wait_for_http(f"{web_url}/healthz", 120, ok_only=True)
        wait_for_first_tick(stack.settings, 120)
        stack.finish_model_export(exporting)
        supervisor = Supervisor(stack, {"web": f"{web_url}/healthz", "flower": f"{flower_url}/healthcheck"})
        print(f"daas is up (provider: {settings.provider}; logs in {settings.state_dir / 'logs'})\n"
              f"  upload form  {web_url}/\n"
              f"  API          {web_url}/api/jobs\n"
              f"  Flower       {flower_url}/  (user {settings.flower_user}, password {where})\n"
              f"  AWS endpoint {stack.settings.aws_endpoint or 'AWS ' + settings.region}\n"
              "Workers start when images arrive and power off when idle. Ctrl-C stops everything.",
              flush=True)
        while True:
            time.sleep(0.5)
            for line in supervisor.step():
                print(line, file=sys.stderr, flush=True)
    except (RuntimeError, TimeoutError) as exc:  # a crash loop, or a stack that never became healthy
        print(f"stopping: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping all processes… (Ctrl-C again: kill them at once)", flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second one must not cut the stop short
            signal.signal(sig, lambda *_: stack.kill())
        stack.stop()


def wait_for_first_tick(settings: config.Settings, timeout: float) -> None:
    """Until the autoscaler's first decision is recorded: the stack then takes work end to end."""
    from daas import health

    deadline = time.monotonic() + timeout
    while health.read(settings, health.TICK) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the autoscaler recorded no decision within {timeout:.0f} s (see the controller's log)")
        time.sleep(0.5)


def flower_credentials(settings: config.Settings) -> tuple[config.Settings, str]:
    """Flower's user and password, and where the password is to be read (never printed): from
    DAAS_FLOWER_PASSWORD, or generated once and kept in the state folder (mode 0600)."""
    settings = settings.with_(flower_user=settings.flower_user or "admin")
    if settings.flower_password:
        return settings, "from DAAS_FLOWER_PASSWORD"
    path = settings.state_dir / "flower-password"
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    try:  # exclusive: Flower and the web tier may start together, and must agree
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
            file.write(secrets.token_urlsafe(12))
    except FileExistsError:
        pass
    return settings.with_(flower_password=path.read_text().strip()), f"in {path}"


def cmd_flower(_args: argparse.Namespace) -> int:
    """Flower behind basic auth. The credentials reach it in its environment (Flower reads
    FLOWER_<option> variables), never on a command line that `ps` shows."""
    from daas.parameters import with_secrets
    from daas.stack import listening

    loaded = config.load()
    if listening(loaded, loaded.flower_port):  # Flower would end in an OSError's traceback
        raise SystemExit(f"daas flower: port {loaded.flower_port} is in use (a `make run` still running?); "
                         "stop it, or set DAAS_FLOWER_PORT to another port")
    settings, _ = flower_credentials(with_secrets(loaded))
    os.environ["FLOWER_BASIC_AUTH"] = f"{settings.flower_user}:{settings.flower_password}"
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "daas.celery_app", "flower",
                              f"--address={settings.host}", f"--port={settings.flower_port}",
                              # workers send events themselves; forget them soon after they exit
                              "--enable_events=False", "--purge_offline_workers=30"])


def cmd_init(_args: argparse.Namespace) -> int:
    from daas import aws

    settings = config.load()
    aws.ensure_resources(settings)
    print(f"ready: buckets {settings.input_bucket}, {settings.output_bucket}; "
          f"queues {settings.queue} (+ {settings.dead_letter_queue}), {settings.control_queue}; "
          f"topics {', '.join(aws.topic_names(settings))}; table {settings.rate_limit_table}")
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from daas.serving import claim_web_port, prepare_metrics_folder

    loaded = config.load()
    claim_web_port(loaded)  # before its metrics folder is emptied: it might be a running tier's
    prepare_metrics_folder(loaded)  # before anything imports prometheus_client
    from daas import aws
    from daas.parameters import with_secrets
    from daas.serving import limit_malloc_arenas, serve
    from web import create_app, warm_up

    # The status panel reads Flower's task counts, with Flower's password.
    settings, _ = flower_credentials(with_secrets(loaded))
    aws.ROLE = "web"
    # Missing credentials or queue in one line (main), where each gunicorn worker's boot printed a traceback
    aws.check_queue(settings)
    limit_malloc_arenas()
    serve(create_app(settings), settings.host, settings.web_port, **web_serving(settings),
          warm_up=lambda: warm_up(settings))
    return 0


def web_serving(settings: config.Settings) -> dict:
    """The web tier's gunicorn settings (keyword arguments of daas.serving.serve). On SIGTERM its
    requests get until web_graceful_timeout, so a waiting /classify still answers (issue 16)."""
    return {"workers": settings.web_workers, "threads": settings.web_threads, "timeout": settings.web_timeout,
            "graceful_timeout": settings.web_graceful_timeout, "name": "daas-web"}


def cmd_controller(_args: argparse.Namespace) -> int:
    """The control-queue worker: autoscaler ticks, dead-letter reaper, housekeeping."""
    from celery import signals

    from daas.celery_app import app
    from daas.watchdog import Watchdog

    from daas import aws, metrics

    settings = config.load()
    aws.ROLE = "controller"
    # No remote control here: nothing to inspect, and a pidbox would only add SQS traffic.
    app.conf.worker_enable_remote_control = False
    metrics.serve_controller(settings)
    watchdog = Watchdog(settings.control_queue, settings.stall_timeout, settings.task_time_limit)
    signals.worker_init.connect(lambda **_: watchdog.start(), weak=False)
    signals.worker_ready.connect(watchdog.ready, weak=False)
    # Threads: a slow housekeeping run (seconds, on a loaded machine) must not hold up the scaling
    # ticks behind it; they expire when the next is due, and three missed ones read as a stall.
    app.worker_main(["worker", "--queues", settings.control_queue, "--pool", "threads", "--concurrency", "3",
                     "--hostname", f"{settings.stack}-controller@%h", "--loglevel", "INFO",
                     "--without-mingle", "--without-gossip", *([] if settings.events else ["--without-heartbeat"])])
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from daas import worker

    return worker.run(register_in=args.register_in, processes=args.processes)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def _image_files(paths: list[str]) -> list[Path]:
    """The files named, and the images in the folders named (by suffix; the others are counted on stderr)."""
    files, skipped = [], []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file())
            files += [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
            skipped += [p for p in found if p.suffix.lower() not in IMAGE_SUFFIXES]
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"no such file or folder: {raw}")
    if skipped:
        print(f"skipped {len(skipped)} file(s) in the folders without an image suffix ({', '.join(IMAGE_SUFFIXES)}), "
              f"e.g. {skipped[0]}; name a file to send it anyway", file=sys.stderr)
    return files


def cmd_classify(args: argparse.Namespace) -> int:
    """Send files through the service's API and print (or write) their labels."""
    from daas.client import ServiceClient, ServiceError

    files = _image_files(args.paths)
    if not files:
        print("no image files found", file=sys.stderr)
        return 2
    try:
        results = ServiceClient(args.url, key=args.key).classify_files(files, batch=args.batch,
                                                                       timeout=args.timeout)
    except ServiceError as exc:  # a missing or wrong key, no service: one line, no traceback
        raise SystemExit(str(exc)) from None
    print_lines(f"{r['path']}: {r['label']} ({r['score']:.2f})" if r["status"] == "done" else
                f"{r['path']}: ERROR {r.get('error') or r['status']}" for r in results)
    failed = sum(r["status"] != "done" for r in results)
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "name", "status", "label", "score", "error"])
            for r in results:
                writer.writerow([r["path"], r["name"], r["status"], r.get("label") or "", r.get("score") or "",
                                 r.get("error") or ""])
    return 1 if failed else 0


def cmd_batch(args: argparse.Namespace) -> int:
    """Classify every image under an S3 prefix (daas.batches), following it with a progress bar."""
    from daas.client import ServiceClient, ServiceError

    client = ServiceClient(args.url, key=args.key)
    try:
        if args.cancel:
            batch = client.cancel_batch(args.cancel)
            print(f"batch {batch['batch_id']}: {batch['status']} ({batch['done']} labelled, {batch['errors']} errors)")
            return 0
        if not args.source:
            raise SystemExit("name the source (s3://bucket/prefix/), or --cancel BATCH_ID")
        request = {"source": args.source, "include": args.include, "exclude": args.exclude, "dry_run": args.dry_run,
                   **({"output": args.output} if args.output else {}),
                   **({"callback_url": args.callback_url} if args.callback_url else {})}
        created = client.create_batch(request)
        if args.dry_run:
            print(f"{created['count']:,} images, {in_units(created['bytes'])} would be classified")
            return 0
        print(f"batch {created['batch_id']}: results to {created['output']}", file=sys.stderr)
        if args.no_wait:
            print(created["batch_id"])
            return 0
        try:
            batch = client.follow_batch(created["batch_id"])
        except KeyboardInterrupt:  # the batch goes on: only the following stops
            print(f"\nstopped following; the batch goes on (cancel: python -m daas batch --cancel "
                  f"{created['batch_id']})", file=sys.stderr)
            return 130
    except ServiceError as exc:
        raise SystemExit(str(exc)) from None
    print(f"batch {batch['batch_id']} {batch['status']}: {batch['done']} labelled, {batch['errors']} errors, "
          f"{batch['images_per_second']} images/s; results in {batch['output']}")
    return 1 if batch["errors"] or batch["status"] != "done" else 0


def cmd_timeline(args: argparse.Namespace) -> int:
    from daas import timeline

    settings = config.load()
    records = timeline.read(settings.state_dir)
    if not records:
        raise SystemExit(f"no scaling decisions recorded yet in {settings.state_dir} (is the controller running there?)")
    if args.plot:
        timeline.plot(records, Path(args.plot))
        print(f"wrote {args.plot} ({len(records)} scaling decisions)")
    else:
        print_lines(json.dumps(record) for record in records[-args.last:])  # JSON lines: for jq, grep and people
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """Create or update the stack on AWS (or DAAS_AWS_ENDPOINT); --check only says what would fail."""
    from daas import deploy

    return deploy.command_deploy(args, config.load())


def cmd_destroy(args: argparse.Namespace) -> int:
    from daas import deploy

    return deploy.command_destroy(args, config.load())


def cmd_export(args: argparse.Namespace) -> int:
    from daas.runtimes import export

    return export.command_export(config.load())


def cmd_bench(args: argparse.Namespace) -> int:
    from daas import bench

    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C: the stacks a benchmark started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return bench.main(args)


def parser() -> argparse.ArgumentParser:
    settings = config.load()
    root = argparse.ArgumentParser(prog="python -m daas", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole stack on this machine")
    up.add_argument("--aws", action="store_true", help="use real AWS instead of a local endpoint")
    up.set_defaults(func=cmd_up)
    sub.add_parser("init", help="create the buckets, queues, topics and table (without `deploy`)").set_defaults(
        func=cmd_init)
    sub.add_parser("web", help="run the web tier").set_defaults(func=cmd_web)
    sub.add_parser("controller", help="run the controller (autoscaler, reaper)").set_defaults(func=cmd_controller)
    sub.add_parser("flower", help="run Flower, the Celery dashboard, behind basic auth").set_defaults(func=cmd_flower)
    worker = sub.add_parser("worker", help="run a classification worker")
    worker.add_argument("--register-in", metavar="DIR",
                        help="register as <pid> here, and <pid>.ready once consuming (local provider)")
    worker.add_argument("--processes", type=int, default=None, metavar="N",
                        help="consuming processes (default: DAAS_WORKER_PROCESSES; 0: 4 per core)")
    worker.set_defaults(func=cmd_worker)

    sub.add_parser("export", help="export the model for the runtime now (DAAS_MODEL_CACHE), and check it loads").set_defaults(
        func=cmd_export)

    classify = sub.add_parser("classify", help="classify image files or folders through the service")
    classify.add_argument("paths", nargs="+")
    classify.add_argument("--url", default=f"http://{settings.host}:{settings.web_port}")
    # The variable is the better way: `ps` shows every process's arguments to every user.
    classify.add_argument("--key", default=settings.api_key,
                          help="API key, for a service with DAAS_API_KEYS (default: $DAAS_API_KEY)")
    classify.add_argument("--csv", help="also write the results to this CSV file")
    classify.add_argument("--batch", type=at_least_one, default=50, help="images per upload request")
    classify.add_argument("--timeout", type=float, default=600, help="seconds to wait for all labels")
    classify.set_defaults(func=cmd_classify)

    batch = sub.add_parser("batch", help="classify every image under an S3 prefix, results as JSON Lines in S3")
    batch.add_argument("source", nargs="?", help="s3://bucket/prefix/ (a bucket in DAAS_BATCH_SOURCES, or the input bucket)")
    batch.add_argument("--output", help="s3://<output bucket>/<prefix>/ (default: s3://<output bucket>/batch-results/)")
    batch.add_argument("--include", default="*", help="glob of the keys below the prefix to classify (default: *)")
    batch.add_argument("--exclude", default="", help="glob of keys to leave out")
    batch.add_argument("--dry-run", action="store_true", help="only count the images and bytes it would classify")
    batch.add_argument("--callback-url", help="POSTed the batch's summary when it ends (signed: see README)")
    batch.add_argument("--no-wait", action="store_true", help="print the batch id and return")
    batch.add_argument("--cancel", metavar="BATCH_ID", help="cancel a batch: chunks not yet started are skipped")
    batch.add_argument("--url", default=f"http://{settings.host}:{settings.web_port}")
    batch.add_argument("--key", default=settings.api_key, help="API key (default: $DAAS_API_KEY)")
    batch.set_defaults(func=cmd_batch)

    tl = sub.add_parser("timeline", help="the autoscaler's decisions; --plot draws them")
    tl.add_argument("--plot", help="write a PNG plot of queue depth and workers over time")
    tl.add_argument("--last", type=at_least_one, default=20, help="how many of the latest decisions to print")
    tl.set_defaults(func=cmd_timeline)

    dep = sub.add_parser("deploy", help="create or update the service's CloudFormation stack on AWS")
    dep.add_argument("--stack", help="stack name (default: $DAAS_STACK)")
    dep.add_argument("--ami", help="the daas AMI (default: $DAAS_EC2_AMI, else the newest tagged daas:role=worker-ami)")
    dep.add_argument("--region", help="default: $AWS_REGION")
    dep.add_argument("--subnets", help="comma-separated, two zones or more (default: the default VPC's)")
    dep.add_argument("--certificate-arn", default="", help="ACM certificate: HTTPS on the load balancer")
    dep.add_argument("--http", action="store_true", help="serve plain HTTP (no certificate) on purpose")
    dep.add_argument("--retention-days", type=int, default=30, help="days images and results are kept")
    dep.add_argument("--web-hosts", type=int, default=2)
    dep.add_argument("--scale-max", type=int, default=20, help="most worker instances at once")
    dep.add_argument("--instance-types", default=config.Settings.ec2_instance_types,
                     help="worker instance types, comma-separated: every type in every subnet is a capacity pool")
    dep.add_argument("--capacity", default=config.Settings.ec2_capacity, choices=config.CAPACITIES,
                     help="workers on spot, on demand, or spot with an on-demand fallback")
    dep.add_argument("--batch-source", default="", help="a bucket of yours that batch jobs may read (workers get "
                     "read access to it only; default: $DAAS_BATCH_SOURCES)")
    dep.add_argument("--check", action="store_true", help="read-only: say what would make a deploy fail")
    dep.set_defaults(func=cmd_deploy)
    destroy = sub.add_parser("destroy", help="delete the stack and everything of it (asks first)")
    destroy.add_argument("--stack", help="stack name (default: $DAAS_STACK)")
    destroy.add_argument("--region", help="default: $AWS_REGION")
    destroy.add_argument("--yes", action="store_true", help="do not ask")
    destroy.set_defaults(func=cmd_destroy)

    bench = sub.add_parser("bench", help="benchmarks (see README)")
    bench.add_argument("which", nargs="?", default="all", choices=list(BENCHMARKS))
    bench.add_argument("--out", default="bench-results", help="folder for JSON and plots")
    bench.add_argument("--images", type=int, default=120, help="images in the throughput runs")
    bench.add_argument("--minutes", type=float, default=30, help="how long the soak runs")
    bench.set_defaults(func=cmd_bench)
    return root


def print_lines(lines: Iterable[str]) -> None:
    """Print to stdout; a reader that goes away (`daas timeline | head`) ends the command quietly."""
    try:
        for line in lines:
            print(line)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit fails else
        raise SystemExit(141) from None


def credentials_hint(exc: Exception) -> str:
    """What to do about boto3 finding no credentials: the local endpoint takes any."""
    from botocore.exceptions import NoCredentialsError

    if not isinstance(exc, NoCredentialsError):
        return ""
    if config.load().aws_endpoint:
        return (" (the local endpoint takes any: AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing, "
                "as `daas up` sets them for its processes)")
    return " (give them as boto3 reads them: `aws configure`, AWS_PROFILE, the environment, an instance role)"


def at_least_one(raw: str) -> int:
    """An argparse type: a whole number of 1 or more."""
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number of 1 or more")
    return int(raw)


def in_units(size: int) -> str:
    """Bytes in the largest decimal unit that keeps a figure of at least 1 (41.0 GB, 3.2 kB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def main(argv: list[str] | None = None) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    try:  # the parser reads the settings too (its defaults)
        args = parser().parse_args(argv)
        return args.func(args)
    except config.ConfigError as exc:  # a person's setting: say which and why, not a traceback
        print(f"daas: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:  # AWS refused a call (a denied permission, a missing resource)
        from daas.aws import error_message

        print(f"daas {args.command}: AWS refused {exc.operation_name}: {error_message(exc)}", file=sys.stderr)
        return 1
    except BotoCoreError as exc:  # no credentials, an endpoint that does not answer
        print(f"daas {args.command}: {exc}{credentials_hint(exc)}", file=sys.stderr)
        return 1
