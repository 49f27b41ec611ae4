"""All configuration, read from environment variables with documented defaults.

Every process of the service (web tier, controller, workers, CLI, tests) builds its settings
here and nowhere else. `ENV_VARS` is the single table of variables: `load()` reads it,
`to_env()` hands settings to child processes, and a test checks README.md lists each one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

MB = 1024 * 1024

# -- Timings that are not settings --------------------------------------------------------------
# Seconds unless named otherwise; each group beside the settings it must agree with (Settings.check
# refuses the pairs a setting could break). The modules named say why where a value was measured.

# Consumers (workers, the controller) and their watchdog (daas.watchdog), beside stall_timeout:
CONSUMER_LONG_POLL = 10  # an idle consumer's ReceiveMessage wait (SQS's most is 20); a completed poll is progress
STALL_POLLS = 2  # stall_timeout holds at least this many long polls: one slow poll never ends a consumer
STARTUP_TIMEOUT = 300.0  # from a consumer's start to consuming (model load, first connection); the units' TimeoutStartSec is above
# A worker's duties (daas.lifecycle), beside heartbeat_interval and visibility_timeout:
MISSED_HEARTBEATS = 3  # "several missed heartbeats": one lost PUT or a slow second never kills a worker
EXTENSIONS_PER_VISIBILITY = 4  # a held message's visibility is pushed back 4 times per visibility_timeout
DUTY_TIMEOUT_MIN, DUTY_TIMEOUT_MAX = 1.0, 5.0  # a duty call's connect and read timeout (daas.aws.duty_timeout)
IMDS_POLL = 5.0  # how often a worker asks the instance metadata for a spot notice (AWS's advice)
IMDS_TOKEN_TTL = 21600  # an IMDSv2 session token's life (AWS's most)
# SQS's limits that settings meet (AWS refuses more; the local endpoint does not always):
SQS_MAX_VISIBILITY = 43200  # 12 h: a message's visibility, however many times it is extended
SQS_MAX_RECEIVE_COUNT = 1000  # a redrive policy's maxReceiveCount
# Per-process queues' leases (daas.leases), beside queue_lease_interval:
MISSED_RENEWALS = 5  # a lease survives a throttled or briefly stopped owner
# The web tier, beside result_timeout:
REPLY_LONG_POLL = 20  # a reply queue's ReceiveMessage wait (daas.replies)
REPLY_FALLBACK_EVERY = 10.0  # a waiter that has heard nothing this long also reads the output bucket
GRACEFUL_MARGIN = 10.0  # on top of result_timeout for a stopping web tier's last answers
RATE_LIMIT_CONTENDED_WAIT = 1.0  # a request that lost every conditional write is asked to wait this long
# Completion callbacks (daas.callbacks), beside callback_timeout:
CALLBACK_FIRST_WAIT, CALLBACK_LONGEST_WAIT = 1.0, 60.0  # the backoff between attempts
CALLBACK_ATTEMPT_TIMEOUT = 10.0  # one POST
# The controller, beside scale_interval and batch_interval:
TICKS_MISSED_UNHEALTHY = 3  # /api/status and `up` call the autoscaler stalled after this many intervals
METRICS_TICK_CACHE = 5.0  # the controller's /metrics reads the tick record at most this often
MAX_LAUNCH_BACKOFF = 300.0  # after EC2 refuses launches, the next try waits up to this long (daas.autoscale)
REMEMBER_LAUNCHES = 300.0  # a launched instance counts until DescribeInstances lists it, this long at most
MIN_BUSY = 5.0  # a worker's rate counts once it has been busy this long (its first task warms up)
BATCH_LIST_BUDGET = 20.0  # one tick lists a batch this long before the next batch (and tick) get a turn
# `daas up`'s supervisor (daas.supervisor), as systemd on AWS:
PROBE_EVERY, PROBE_TIMEOUT, PROBE_FAILURES = 5.0, 5.0, 3  # HTTP probes of the web tier and Flower
# Seconds without an answer before a process is restarted, where it differs from PROBE_FAILURES
# probes: Flower is a dashboard, off the path of every image; restarting it loses what it has seen
# and its place in the event stream, so a Flower that is slow or stopped for a while (two minutes in
# the soak) gets time to come back and catch up.
PROBE_PATIENCE = {"flower": 180.0}
STARTUP_GRACE = 30.0  # a (re)started process gets this long before it must show progress
LOG_CHECK_EVERY = 60.0  # how often the logs' sizes are checked (rotated past 64 MB)


# The values a setting of a few words may take (its default is Settings'); other modules take them from here.
PROVIDERS = ("local", "ec2")
DEVICES = ("auto", "cpu", "cuda")
RUNTIMES = ("openvino", "onnxruntime", "torch")  # DAAS_RUNTIME also takes auto (daas.runtimes.resolve)
PRECISIONS = ("f32", "bf16")  # DAAS_PRECISION also takes auto
CAPACITIES = ("spot-first", "spot", "on-demand")  # daas.ec2fleet.ORDER says what each launches
CHOICES = {"provider": PROVIDERS, "device": DEVICES, "runtime": ("auto", *RUNTIMES),
           "precision": ("auto", *PRECISIONS), "ec2_capacity": CAPACITIES}


class ConfigError(ValueError):
    """A setting that cannot work: its message names the variable, the value and what would."""


@dataclass(frozen=True)
class Settings:
    # AWS. An empty endpoint means real AWS through boto3's default credential chain.
    aws_endpoint: str = ""
    region: str = "us-east-1"
    stack: str = "daas"
    input_bucket: str = ""   # default: <stack>-input
    output_bucket: str = ""  # default: <stack>-output
    queue: str = ""          # default: <stack>-classify (its dead-letter queue: <queue>-dlq)
    control_queue: str = ""  # default: <stack>-control
    account_id: str = ""     # the stack's AWS account (topic ARNs); default: asked of STS once per process
    # Local stack
    host: str = "127.0.0.1"
    web_port: int = 3000
    aws_port: int = 4566
    flower_port: int = 5555
    flower_user: str = ""
    flower_password: str = ""
    # Web tier: gunicorn processes and threads (a waiting POST /classify holds a thread), and the
    # seconds a client may stall while it sends a request.
    web_workers: int = 2
    web_threads: int = 64
    web_timeout: float = 30.0
    api_keys: str = ""       # comma-separated; empty: the upload, job and ops routes are open
    api_key: str = ""        # the key `python -m daas classify` sends (a client's setting, not the service's)
    # A deployed stack keeps its secrets in SSM Parameter Store (SecureString, made by `daas deploy`):
    # these name the parameters that the web tier and Flower read at start, in place of the two above.
    api_keys_parameter: str = ""
    flower_password_parameter: str = ""
    rate_limit: int = 0      # images per minute per API key (per client address when open); 0: none
    trusted_proxies: int = 0  # proxies in front of the web tier whose X-Forwarded-* headers to trust
    state_dir: Path = Path(".daas")
    # Model and input limits
    model: str = "efficientnet_lite0"
    model_weights: str = ""
    device: str = "auto"     # cpu, cuda, or auto: cuda where an NVIDIA GPU is present
    # Inference runtime (daas.runtimes): openvino, onnxruntime or torch; auto is torch on a GPU and
    # openvino on CPU, the fastest measured here (README, Inference runtime). precision: f32, bf16 or
    # auto (the runtime's own choice: OpenVINO runs bf16 where the CPU has it, f32 elsewhere).
    runtime: str = "auto"
    precision: str = "auto"
    model_cache: str = ""    # folder of the exported networks (ONNX); default: <state_dir>/models
    max_image_bytes: int = 10 * MB
    max_image_pixels: int = 50_000_000
    max_files: int = 500
    result_timeout: float = 60.0
    # Delivery. A worker keeps the messages it holds invisible (extending them every quarter of the
    # timeout) for up to task_time_limit seconds, so a short timeout is safe: what a killed worker
    # held comes back within visibility_timeout seconds.
    visibility_timeout: int = 20
    max_receives: int = 3
    task_time_limit: float = 300.0
    # Workers
    images_per_task: int = 10  # images per queue message (see daas.jobs.chunks)
    worker_concurrency: int = 1
    # Consuming processes per worker (an EC2 instance, or one `daas worker` command; see
    # daas.instance). 0: 4 per core, the bench's best. The local provider's workers are one each.
    worker_processes: int = 0
    inference_threads: int = 1  # threads of the forward pass per worker process
    prefetch_multiplier: int = 1
    idle_timeout: float = 60.0
    poweroff_command: str = ""
    events: bool = True
    max_lifetime: float = 86400.0  # seconds a worker serves before it retires (0: forever)
    worker_host: str = ""    # the host part of a worker's name; default: the host name (EC2: the instance id)
    # The instance metadata service a worker watches for spot interruption notices and rebalance
    # recommendations (daas.interruption); EC2 workers get http://169.254.169.254; empty: none.
    imds_endpoint: str = ""
    # Liveness: every process of the service that consumes a queue (workers, controller) exits when it
    # has made no progress for stall_timeout seconds; workers write a heartbeat every
    # heartbeat_interval seconds, and one that missed MISSED_HEARTBEATS is dead to the controller.
    heartbeat_interval: float = 15.0
    stall_timeout: float = 60.0
    sweep_interval: float = 60.0  # the controller's housekeeping: dead workers, orphaned queues
    # Per-process queues (pidbox, event receivers, reply queues) carry a lease their owner renews
    # this often (one TagQueue per queue); housekeeping deletes those not renewed for
    # MISSED_RENEWALS intervals (5 minutes by default: Flower stopped for 2 minutes keeps its queue).
    queue_lease_interval: float = 60.0
    # Batch jobs over images already in S3 (daas.batches): the buckets a batch may read besides the
    # input bucket (comma-separated names; on AWS the deploy grants the workers read access to
    # exactly these), and how often the controller finishes batches and starts callbacks (two LIST
    # calls a tick: every 10 s is about $0.04 a day idle; a new batch, and a listing not yet
    # complete, ask for the next tick at once).
    batch_sources: str = ""
    batch_interval: float = 10.0
    batch_queue_ahead: int = 200  # classify-queue messages (chunks) a batch's lister lets wait at most
    # Completion callbacks (daas.callbacks): POSTed with an HMAC-SHA256 signature, retried with
    # backoff for up to callback_timeout seconds. URLs resolving to loopback, link-local or private
    # addresses are refused unless callback_allow_private is set (a test's own receiver).
    # callback_secret signs callbacks where no API keys are set (with keys, each key's own secret).
    callback_timeout: float = 600.0
    callback_allow_private: bool = False
    callback_secret: str = ""
    controller_metrics_port: int = 9101  # the controller's Prometheus metrics (0: none); see daas.metrics
    # Autoscaling
    provider: str = "local"
    scale_interval: float = 5.0
    scale_min: int = 0
    scale_max: int = 0       # default: the core count locally, 20 on EC2
    # The boot-aware policy (daas.scaling): drain the backlog within this many seconds, launching
    # only workers that arrive before it drains. Until the controller has measured its workers
    # (daas.observed), it assumes these: images a second one worker classifies (a solo worker on
    # one core of this project's machine, OpenVINO: README, Performance) and seconds from a launch
    # to the first heartbeat (default: 5 locally, 120 on EC2).
    scale_drain_target: float = 30.0
    scale_worker_rate: float = 20.0
    scale_boot_time: float = 0.0
    # EC2 provider
    ec2_launch_template: str = ""
    ec2_ami: str = ""
    # Where workers launch (daas.ec2fleet): instance types and subnets (zones), comma-separated; every
    # type in every subnet is a pool EC2 Fleet may take capacity from; spot first, then on demand.
    ec2_instance_types: str = "c7i.large,c6i.large,m7i.large"
    ec2_subnets: str = ""    # empty: the launch template's (or the default VPC's) subnet
    ec2_capacity: str = "spot-first"  # spot-first, spot or on-demand
    ec2_security_group: str = ""
    ec2_instance_profile: str = ""
    ec2_join_timeout: float = 600.0  # seconds a new worker may take to send its first heartbeat

    def __post_init__(self) -> None:
        derived = {
            "input_bucket": f"{self.stack}-input",
            "output_bucket": f"{self.stack}-output",
            "queue": f"{self.stack}-classify",
            "control_queue": f"{self.stack}-control",
            "scale_max": (os.cpu_count() or 1) if self.provider == "local" else 20,
            "scale_boot_time": 5.0 if self.provider == "local" else 120.0,
        }
        for name, value in derived.items():
            if not getattr(self, name):
                object.__setattr__(self, name, value)
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        if not self.model_cache:
            object.__setattr__(self, "model_cache", str(self.state_dir / "models"))
        self.check()

    @property
    def instance_types(self) -> list[str]:
        return [t.strip() for t in self.ec2_instance_types.split(",") if t.strip()] or ["c7i.large"]

    @property
    def subnets(self) -> list[str]:
        return [s.strip() for s in self.ec2_subnets.split(",") if s.strip()]

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}-dlq"

    @property
    def rate_limit_table(self) -> str:
        """The DynamoDB table of the rate limit's buckets (daas.ratelimit), shared by all web hosts."""
        return f"{self.stack}-ratelimit"

    @property
    def batch_source_buckets(self) -> frozenset[str]:
        """Buckets a batch may list and read: the input bucket and those of DAAS_BATCH_SOURCES."""
        return frozenset({self.input_bucket, *(b.strip() for b in self.batch_sources.split(",") if b.strip())})

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(key.strip() for key in self.api_keys.split(",") if key.strip())

    @property
    def stale_after(self) -> float:
        """Seconds without a heartbeat after which a worker counts as dead."""
        return MISSED_HEARTBEATS * self.heartbeat_interval

    @property
    def queue_lease_expiry(self) -> float:
        """Seconds after its last lease renewal when a per-process queue counts as orphaned."""
        return MISSED_RENEWALS * self.queue_lease_interval

    @property
    def web_graceful_timeout(self) -> float:
        """Seconds the web tier's processes get to finish their requests on SIGTERM: a waiting
        POST /classify holds its thread up to result_timeout, then writes its answer."""
        return self.result_timeout + GRACEFUL_MARGIN

    @property
    def extend_every(self) -> float:
        """How often a worker pushes back the visibility timeout of the messages it holds."""
        return self.visibility_timeout / EXTENSIONS_PER_VISIBILITY

    def check(self) -> None:
        """Refuse settings that cannot work together (ConfigError naming the variables); called for
        every Settings, so a process with such settings stops at its start, not hours later."""
        problems = [problem for problem in (self._one_of_choices(), self._in_range(),
                                            self._stall_outlasts_polls(), self._within_sqs_limits()) if problem]
        if problems:
            raise ConfigError("; ".join(problems))

    def _one_of_choices(self) -> str:
        bad = [f"{ENV_VARS[name]}={getattr(self, name)!r} is none of {', '.join(values)}"
               for name, values in CHOICES.items() if getattr(self, name) not in values]
        return "; ".join(bad)

    def _in_range(self) -> str:
        periods = ("heartbeat_interval", "scale_interval", "sweep_interval", "batch_interval", "queue_lease_interval",
                   "stall_timeout", "result_timeout", "task_time_limit", "web_timeout", "callback_timeout",
                   "ec2_join_timeout", "scale_drain_target")
        counts = ("web_workers", "web_threads", "images_per_task", "worker_concurrency", "inference_threads",
                  "prefetch_multiplier", "max_files", "max_image_bytes", "max_image_pixels", "batch_queue_ahead")
        # 0 means something for these (never, none, the default, every core), a negative value nothing
        zero_or_more = ("idle_timeout", "max_lifetime", "rate_limit", "trusted_proxies", "worker_processes",
                        "scale_min", "scale_boot_time", "controller_metrics_port")
        bad = [f"{ENV_VARS[name]}={getattr(self, name):g}" for name in periods if getattr(self, name) <= 0]
        problems = [f"{', '.join(bad)}: must be more than 0 seconds"] if bad else []
        problems += [f"{ENV_VARS[name]}={getattr(self, name)}: must be 1 or more"
                     for name in counts if getattr(self, name) < 1]
        if self.scale_worker_rate <= 0:
            problems.append(f"DAAS_SCALE_WORKER_RATE={self.scale_worker_rate:g}: must be more than 0 images a second")
        problems += [f"{ENV_VARS[name]}={getattr(self, name):g}: must be 0 or more"
                     for name in zero_or_more if getattr(self, name) < 0]
        if self.scale_min > self.scale_max:
            problems.append(f"DAAS_SCALE_MIN={self.scale_min} is more than DAAS_SCALE_MAX={self.scale_max} (its "
                            "default: the core count locally, 20 on EC2)")
        return "; ".join(problems)

    def _stall_outlasts_polls(self) -> str:
        least = STALL_POLLS * CONSUMER_LONG_POLL
        if 0 < self.stall_timeout < least:
            return (f"DAAS_STALL_TIMEOUT={self.stall_timeout:g} is shorter than {STALL_POLLS} long polls of an idle "
                    f"consumer ({CONSUMER_LONG_POLL} s each): idle workers would be called stalled and "
                    f"restarted; set it to {least} or more")
        return ""

    def _within_sqs_limits(self) -> str:
        if not 1 <= self.visibility_timeout <= SQS_MAX_VISIBILITY:
            return f"DAAS_VISIBILITY_TIMEOUT={self.visibility_timeout}: SQS takes 1 to {SQS_MAX_VISIBILITY} seconds"
        if self.task_time_limit + self.visibility_timeout > SQS_MAX_VISIBILITY:
            return (f"DAAS_TASK_TIME_LIMIT={self.task_time_limit:g} with DAAS_VISIBILITY_TIMEOUT="
                    f"{self.visibility_timeout}: SQS refuses to keep a message invisible for more than "
                    f"{SQS_MAX_VISIBILITY} s (12 h) in all, so the worker could not hold it that long; "
                    f"their sum must be {SQS_MAX_VISIBILITY} or less")
        if not 1 <= self.max_receives <= SQS_MAX_RECEIVE_COUNT:
            return f"DAAS_MAX_RECEIVES={self.max_receives}: SQS's redrive policy takes 1 to {SQS_MAX_RECEIVE_COUNT}"
        return ""

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)


def _env_name(field_name: str) -> str:
    # The region keeps AWS's own variable name, so boto3 and our code agree on it.
    return "AWS_REGION" if field_name == "region" else f"DAAS_{field_name.upper()}"


ENV_VARS: dict[str, str] = {f.name: _env_name(f.name) for f in fields(Settings)}


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _parse_bool(raw: str) -> bool:
    # A misspelt "ture" read as False would turn a feature off without a word.
    if raw.lower() not in TRUE + FALSE:
        raise ValueError(raw)
    return raw.lower() in TRUE


def _parse(field_type: str, name: str, raw: str):
    parsers = {"int": int, "float": float, "Path": Path, "bool": _parse_bool}
    try:
        return parsers.get(field_type, str)(raw)
    except ValueError:
        if field_type == "bool":
            raise ConfigError(f"{name}={raw!r} is neither of {'/'.join(TRUE)} nor of {'/'.join(FALSE)}") from None
        raise ConfigError(f"{name} must be of type {field_type}, got {raw!r}") from None


def load(environ: dict[str, str] | None = None) -> Settings:
    """Settings from the environment; unset or empty variables keep their defaults."""
    environ = os.environ if environ is None else environ
    values = {}
    for f in fields(Settings):
        raw = environ.get(ENV_VARS[f.name], "").strip()
        if f.name == "region" and not raw:
            raw = environ.get("AWS_DEFAULT_REGION", "").strip()
        if raw:
            values[f.name] = _parse(str(f.type), ENV_VARS[f.name], raw)
    return Settings(**values)


def to_env(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce `settings` in a child process."""
    env = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        env[ENV_VARS[f.name]] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    env["AWS_DEFAULT_REGION"] = settings.region
    return env
