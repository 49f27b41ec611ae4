"""The one Celery app of the service, configured from the top-level `celeryconfig` module."""
from celery import Celery

import daas.transport  # noqa: F401  the broker transport (and its event-loop fix), loaded before any loop starts

app = Celery("daas", include=["daas.tasks", "daas.control", "daas.autoscale"])
app.config_from_object("celeryconfig")
