"""Celery configuration module for the daas app (loaded by `app.config_from_object("celeryconfig")`).

Values come from daas.config, so the environment variables in README.md are the only knobs.
"""
from daas import config as _config
from daas.broker import broker_url as _broker_url, transport_options as _transport_options

_settings = _config.load()

broker_url = _broker_url(_settings)
broker_transport_options = _transport_options(_settings)
broker_connection_retry_on_startup = True

# Routing: images on the classify queue; the controller's housekeeping on its own queue so that
# it never waits behind the backlog it measures.
task_default_queue = _settings.queue
task_routes = {
    "daas.classify": {"queue": _settings.queue},
    "daas.scale": {"queue": _settings.control_queue},
    "daas.reap_dead_letters": {"queue": _settings.control_queue},
}
beat_schedule = {
    "scale": {"task": "daas.scale", "schedule": _settings.scale_interval,
              "options": {"expires": _settings.scale_interval}},
    "reap-dead-letters": {"task": "daas.reap_dead_letters", "schedule": max(_settings.scale_interval, 10.0),
                          "options": {"expires": max(_settings.scale_interval, 10.0)}},
}

# Delivery: a message is deleted only after its task finished, so a killed worker's image comes
# back after the visibility timeout; the queue's redrive policy ends endless redelivery.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = _settings.prefetch_multiplier

# Results live in the output bucket (one JSON object per image), not in a Celery backend.
task_ignore_result = True
task_serializer = "json"
accept_content = ["json"]

worker_send_task_events = _settings.events
task_send_sent_event = _settings.events
