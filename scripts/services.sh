#!/usr/bin/env bash
# Makes sure Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432) are up, starting them when this machine
# has them but they are down. Exits non-zero, saying which, when one cannot be brought up: the test suite
# needs both and never skips them.
set -u

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }

if ! redis_up; then
  if command -v redis-server >/dev/null; then
    echo "starting redis-server"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
  fi
fi

if ! pg_up; then
  if command -v pg_lsclusters >/dev/null; then
    version=$(pg_lsclusters --no-header | awk '$2 == "main" {print $1; exit}')
    if [ -n "$version" ]; then
      echo "starting PostgreSQL $version"
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
      for _ in $(seq 1 100); do pg_up && break; sleep 0.1; done
    fi
  fi
fi

status=0
redis_up || { echo "Redis is not reachable on 127.0.0.1:6379 and could not be started" >&2; status=1; }
pg_up || { echo "PostgreSQL is not reachable on 127.0.0.1:5432 and could not be started" >&2; status=1; }
[ $status -eq 0 ] && echo "services: redis and postgresql are up"
exit $status
