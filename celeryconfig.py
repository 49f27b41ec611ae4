"""Celery configuration module for the daas app (loaded by `app.config_from_object("celeryconfig")`).

Values come from daas.config, so the environment variables in README.md are the only knobs.
"""
from daas import broker as _broker
from daas import config as _config

_settings = _config.load()

broker_url = _broker.broker_url(_settings)
broker_transport = _broker.TRANSPORT
broker_transport_options = _broker.transport_options(_settings)
broker_connection_retry_on_startup = True

# Routing: images on the classify queue; the controller's housekeeping on its own queue so that
# it never waits behind the backlog it measures.
task_default_queue = _settings.queue
task_routes = {
    "daas.classify": {"queue": _settings.queue},
    "daas.scale": {"queue": _settings.control_queue},
    "daas.reap_dead_letters": {"queue": _settings.control_queue},
    "daas.housekeeping": {"queue": _settings.control_queue},
    "daas.classify_objects": {"queue": _settings.queue},
    "daas.batch_tick": {"queue": _settings.control_queue},
}
_reap_interval = max(_settings.scale_interval, 10.0)
beat_schedule = {  # each tick expires when the next is due: a backlog of ticks is never worked off
    "scale": {"task": "daas.scale", "schedule": _settings.scale_interval,
              "options": {"expires": _settings.scale_interval}},
    "housekeeping": {"task": "daas.housekeeping", "schedule": _settings.sweep_interval,
                     "options": {"expires": _settings.sweep_interval}},
    "batches": {"task": "daas.batch_tick", "schedule": _settings.batch_interval,
                "options": {"expires": _settings.batch_interval}},
    "reap-dead-letters": {"task": "daas.reap_dead_letters", "schedule": _reap_interval,
                          "options": {"expires": _reap_interval}},
}
beat_scheduler = "daas.autoscale:BeatScheduler"  # records each of its ticks (see daas.autoscale)

# Delivery: a message is deleted only after its task finished, so a killed worker's image comes
# back after the visibility timeout (short: workers extend it while they work, daas.lifecycle);
# the queue's redrive policy ends endless redelivery. A message that is not a task of ours is
# rejected by our consumer (daas.consumer) instead of crashing the worker.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = _settings.prefetch_multiplier
worker_consumer = "daas.consumer:Consumer"
task_time_limit = _settings.task_time_limit  # enforced by prefork pools; solo workers: daas.watchdog

# Results live in the output bucket (one JSON object per image), not in a Celery backend.
task_ignore_result = True
task_serializer = "json"
accept_content = ["json"]

# Events (Flower) and remote control (inspect) fan out through SNS, under per-stack names.
# Workers send task events (received, started, succeeded or failed: what Flower shows). The web
# tier sends none: a task-sent event would cost an SNS publish per uploaded image (and endpoint CPU
# in the local bench, see README, Performance) only to show tasks still waiting in the queue; the
# status panel shows the queue's depth instead.
worker_send_task_events = _settings.events
task_send_sent_event = False
event_exchange = _broker.event_exchange(_settings)
event_queue_prefix = f"{_settings.stack}-celeryev"
control_exchange = _broker.control_exchange(_settings)

# Log lines carry the process id: several workers share one log locally (and the soak bench tells
# which worker ran which task from it).
worker_log_format = "[%(asctime)s: %(levelname)s/%(processName)s %(process)d] %(message)s"
worker_task_log_format = ("[%(asctime)s: %(levelname)s/%(processName)s %(process)d] "
                          "%(task_name)s[%(task_id)s]: %(message)s")
