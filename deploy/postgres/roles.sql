-- Least-privilege roles for Quantum Trader. Run once, by initdb/10-roles.sh, as the
-- superuser, with the passwords passed as psql variables (read from Docker secrets).
--
--   qt_owner   owns the database and its tables; used only by `quantum-trader db upgrade`
--              (Alembic DDL). Never given to a running service.
--   qt_app     the services: SELECT, INSERT, UPDATE on the tables. No DELETE, TRUNCATE or
--              DDL: a compromised service cannot erase the trade history or the schema.
--              (One exception, granted by store migration 0002 when it creates the table:
--              DELETE on the outbox, whose published messages are not history.)
--   qt_backup  `quantum-trader backup` (pg_dump): read-only.
--   qt_monitor postgres_exporter (deploy/monitoring): server statistics (pg_monitor), no
--              access to the trading tables.
\set ON_ERROR_STOP on

CREATE ROLE qt_owner LOGIN PASSWORD :'owner_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
CREATE ROLE qt_app LOGIN PASSWORD :'app_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 100;
CREATE ROLE qt_backup LOGIN PASSWORD :'backup_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 4;
CREATE ROLE qt_monitor LOGIN PASSWORD :'monitor_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 3;
GRANT pg_monitor TO qt_monitor;

-- The owner of the database owns its public schema (pg_database_owner, PostgreSQL 15+).
ALTER DATABASE :"dbname" OWNER TO qt_owner;
REVOKE ALL ON DATABASE :"dbname" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"dbname" TO qt_owner;
GRANT CONNECT ON DATABASE :"dbname" TO qt_app, qt_backup, qt_monitor;

\connect :"dbname"
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO qt_app, qt_backup;

-- Tables Alembic creates later (as qt_owner) get these grants automatically.
ALTER DEFAULT PRIVILEGES FOR ROLE qt_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE ON TABLES TO qt_app;
ALTER DEFAULT PRIVILEGES FOR ROLE qt_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO qt_app;
ALTER DEFAULT PRIVILEGES FOR ROLE qt_owner IN SCHEMA public
    GRANT SELECT ON TABLES TO qt_backup;
ALTER DEFAULT PRIVILEGES FOR ROLE qt_owner IN SCHEMA public
    GRANT SELECT ON SEQUENCES TO qt_backup;

-- The migration bookkeeping belongs to the owner alone: created here, as qt_owner, so that
-- qt_app's default grants can be taken back (a service must not fake the schema version).
-- Alembic finds the table and uses it.
SET ROLE qt_owner;
CREATE TABLE IF NOT EXISTS alembic_version (
    version_num VARCHAR(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
RESET ROLE;
REVOKE INSERT, UPDATE ON alembic_version FROM qt_app;

-- Statement and idle limits so a stuck service cannot hold locks forever.
ALTER ROLE qt_app SET statement_timeout = '30s';
ALTER ROLE qt_app SET idle_in_transaction_session_timeout = '60s';
