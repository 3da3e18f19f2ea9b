#!/bin/sh
# docker-entrypoint-initdb.d hook (first start only): create the least-privilege roles with
# passwords from Docker secrets. psql variables keep the passwords out of the SQL file and
# out of the process list (they are read here, not passed on a command line we log).
set -eu
read_secret() { tr -d '\r\n' < "/run/secrets/$1"; }
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v dbname="$POSTGRES_DB" \
     -v owner_password="$(read_secret pg_owner_password)" \
     -v app_password="$(read_secret pg_app_password)" \
     -v backup_password="$(read_secret pg_backup_password)" \
     -v monitor_password="$(read_secret pg_monitor_password)" \
     -f /etc/qt-postgres/roles.sql
