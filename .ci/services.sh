#!/usr/bin/env bash
# Check that the PostgreSQL and Redis the integration tests use answer; start them if not.
set -u
pg_ok() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null || python3 - <<'PY' 2>/dev/null
import socket; socket.create_connection(("127.0.0.1", 5432), 2).close()
PY
}
redis_ok() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! pg_ok; then
  echo "PostgreSQL is not answering; starting it"
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_ok && break; sleep 1; done
fi
if ! redis_ok; then
  echo "Redis is not answering; starting it"
  if command -v redis-server >/dev/null 2>&1; then
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  fi
  for _ in $(seq 1 30); do redis_ok && break; sleep 1; done
fi
pg_ok && echo "PostgreSQL: up" || echo "PostgreSQL: NOT reachable"
redis_ok && echo "Redis: up" || echo "Redis: NOT reachable"
exit 0
