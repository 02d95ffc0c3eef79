#!/bin/sh
# Starts Redis with its password in a config file written here from $REDIS_PASSWORD, not on its command line:
# `--requirepass SECRET` would show the password to anyone on the host who runs `ps`.
#
#   redis-start.sh redis-server --appendonly yes ...    (the arguments are redis-server's, minus the password)
#
# The file is readable by its owner only and lives in the container, never in the data volume. The official
# image's docker-entrypoint.sh then starts redis-server as the user `redis`, with the file as its first argument.
set -eu

: "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}"
conf=${TLQ_REDIS_CONF:-/run/tlq-redis/redis.conf}
umask 077
mkdir -p "$(dirname "$conf")"
printf 'requirepass %s\n' "$REDIS_PASSWORD" >"$conf" # printf is a shell builtin: no process gets the secret
if [ "$(id -u)" = 0 ]; then
  chown redis:redis "$(dirname "$conf")" "$conf"
fi
unset REDIS_PASSWORD REDISCLI_AUTH # redis-server needs neither; the healthcheck gets REDISCLI_AUTH from compose

server=$1
shift
exec docker-entrypoint.sh "$server" "$conf" "$@"
