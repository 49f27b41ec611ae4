"""The one Celery app of the service, configured from the top-level `celeryconfig` module."""
from celery import Celery

app = Celery("daas", include=["daas.tasks", "daas.autoscale"])
app.config_from_object("celeryconfig")

import daas.transport  # noqa: E402,F401  the broker transport, imported before any event loop starts
