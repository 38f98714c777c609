"""The flywheel page inside the Airflow 3 UI (an Airflow plugin: plugin.py registers it)."""
