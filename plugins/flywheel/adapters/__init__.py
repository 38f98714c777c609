"""One module per outside system: Airflow tasks, PostgreSQL, object storage, log stores, models.

The domain (the flywheel package above) never imports these; these import the domain."""
