#!/bin/sh
# Creates the role tlq's services connect as: TLQ_DB_USER (default tlq_app), which may log in and owns the
# database POSTGRES_DB and its public schema, and nothing more: not a superuser, no CREATEDB, no CREATEROLE. The
# superuser (POSTGRES_USER, with its own POSTGRES_PASSWORD) stays for administration only.
#
# The official image runs this once, from /docker-entrypoint-initdb.d, when its data directory is empty; it may
# source it rather than run it, so this file sets no shell options and never exits. psql reads the password
# from the environment itself (\getenv) and quotes it (:'...'), so it is on no command line and needs no
# escaping here.

: "${TLQ_DB_PASSWORD:?set TLQ_DB_PASSWORD in .env}"
TLQ_DB_USER=${TLQ_DB_USER:-tlq_app}
export TLQ_DB_USER

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
\getenv app_user TLQ_DB_USER
\getenv app_password TLQ_DB_PASSWORD
\getenv app_db POSTGRES_DB
CREATE ROLE :"app_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'app_password';
ALTER DATABASE :"app_db" OWNER TO :"app_user";
ALTER SCHEMA public OWNER TO :"app_user";
REVOKE ALL ON DATABASE :"app_db" FROM PUBLIC;
SQL
