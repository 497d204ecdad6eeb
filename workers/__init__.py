"""The fleet: the Celery app, process entry points and the ``orderfleet`` CLI."""
