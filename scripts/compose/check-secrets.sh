#!/bin/sh
# Refuses to let the compose stack start on a secret that is missing, still the placeholder from .env.example,
# too short, shared between two roles, or holding a character that would break the URLs and config files it is
# written into unescaped. Compose's `secrets-check` service runs it before Redis and PostgreSQL, and every
# other service waits on those two, so nothing starts with a guessable password. One line per bad secret.
# The secrets arrive in the environment, never as arguments (`ps` shows arguments to every user of the host).

min_length=16
status=0

refuse() {
  echo "Error: $1 $2; put a fresh one in .env (openssl rand -hex 24) and run docker compose up again" >&2
  status=1
}

for name in REDIS_PASSWORD POSTGRES_PASSWORD TLQ_DB_PASSWORD FLOWER_PASSWORD TLQ_UI_TOKEN; do
  eval "value=\${$name-}"
  lower=$(printf '%s' "$value" | tr 'A-Z' 'a-z')
  case "$lower" in
    "") refuse "$name" "is not set" ;;
    change-me* | change_me* | changeme*) refuse "$name" "is still the placeholder from .env.example" ;;
    *[!a-z0-9._~-]*) refuse "$name" "holds a character other than letters, digits and . _ ~ - (it goes into URLs)" ;;
    *) [ "${#value}" -ge "$min_length" ] || refuse "$name" "is shorter than $min_length characters" ;;
  esac
done

if [ -n "${TLQ_DB_PASSWORD-}" ] && [ "${TLQ_DB_PASSWORD-}" = "${POSTGRES_PASSWORD-}" ]; then
  refuse TLQ_DB_PASSWORD "is the PostgreSQL superuser's password too (POSTGRES_PASSWORD)"
fi

exit $status
