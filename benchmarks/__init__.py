"""Benchmarks: each drives the real fleet (or a real stage) and prints what it measured.

``pipeline`` (``orderfleet bench``: the pipeline against a naive no-op chain, whose task is in
``noop``), ``carrier``, ``fraud``, ``inventory`` and ``webhooks`` (``orderfleet bench carrier``,
...). Nothing in the fleet's own rooms imports this package; the workers load ``noop`` only
because ``config.celery.TASK_MODULES`` names it.
"""
