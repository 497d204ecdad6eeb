"""One module per lifecycle stage; each holds a thin Celery task over plain functions."""
