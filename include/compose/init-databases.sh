#!/bin/bash
# PostgreSQL's first start (docker-entrypoint-initdb.d): the flywheel's own role and database.
# The role owns its database and nothing else; nobody but the owners may connect to a database.
# Passwords come from the environment and reach SQL only as psql variables (:'name'), never
# pasted into the statement text.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v flywheel_password="$FLYWHEEL_DB_PASSWORD" -v airflow_db="$POSTGRES_DB" <<'SQL'
CREATE ROLE flywheel LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'flywheel_password';
CREATE DATABASE flywheel OWNER flywheel;
REVOKE ALL ON DATABASE flywheel FROM PUBLIC;
REVOKE ALL ON DATABASE :"airflow_db" FROM PUBLIC;
REVOKE ALL ON DATABASE postgres FROM PUBLIC;
SQL
