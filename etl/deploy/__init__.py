"""The production deployment (README "Production"): Dagster on PostgreSQL with the daemon's run queue,
steps executed by Celery workers, the webserver and daemon supervised by `esc-sync serve`."""
