"""A fleet on a Redis that wants a password and TLS (``rediss://``): a real redis-server started
that way, certificates made with openssl, a real worker process; and the password in no log."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import delete

from config.celery import celery_config
from domain.db import unit_of_work
from domain.models import BrokerEpoch
from tasks.sweeps import EPOCH_KEY
from tests.waiting import eventually
from workers.fleet import free_port, settings_env

PASSWORD = "s3cret-redis-pass-4f1d"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(d: Path) -> None:
    """A throw-away CA and a server certificate for 127.0.0.1."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "1", "-subj", "/CN=orderfleet test CA", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
             "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.cnf", cwd=d)


@pytest.fixture
def secure_redis(tmp_path) -> Iterator[str]:
    """redis-server with requirepass, TLS only (no plain port); yields its rediss:// URL."""
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("openssl") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server and openssl are needed (apt install redis-server openssl)")
        pytest.skip("redis-server or openssl missing")
    make_certificates(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(tmp_path / "server.pem"),
         "--tls-key-file", str(tmp_path / "server.key"),
         "--tls-ca-cert-file", str(tmp_path / "ca.pem"), "--tls-auth-clients", "no",
         "--requirepass", PASSWORD, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = (f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_cert_reqs=required"
           f"&ssl_ca_certs={tmp_path / 'ca.pem'}")

    def up() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
        except (redis.ConnectionError, OSError):
            return False

    try:
        eventually(up, 15, "redis-server with TLS")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_server_refuses_plain_connections_and_a_missing_password(secure_redis) -> None:
    port = int(secure_redis.split(":")[3].split("/")[0])
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=1).ping()
    no_password = secure_redis.replace(f":{PASSWORD}@", "")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(no_password).ping()


def test_a_worker_runs_tasks_over_tls_with_a_password_and_logs_no_secret(
        secure_redis, db, settings, tmp_path) -> None:
    secure = settings.model_copy(update={"broker_url": secure_redis, "var_dir": tmp_path})
    log = tmp_path / "worker.log"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ORDERFLEET_")},
           **settings_env(secure)}
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "sweeps",
             "-c", "1", "--loglevel", "info", "--without-mingle", "--without-gossip"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    sender = Celery("orderfleet-test-sender", set_as_current=False)
    sender.conf.update(celery_config(secure))
    client = redis.Redis.from_url(secure_redis)
    try:
        # (the worker records the broker's epoch as it starts: over TLS too; cleared again so
        # that the task's own check shows it ran)
        eventually(lambda: client.exists(EPOCH_KEY), 60, "the TLS worker's start")
        client.delete(EPOCH_KEY)
        with unit_of_work(settings) as uow:
            uow.session.execute(delete(BrokerEpoch))
        # when a task is sent over rediss:// and a worker takes it from there
        sender.send_task("orderfleet.sweeps.broker_epoch")
        # then it ran: the check set the broker's epoch key
        eventually(lambda: client.exists(EPOCH_KEY), 60, "the task run by the TLS worker")
    finally:
        worker.terminate()
        worker.wait(30)
        sender.close()
    text = log.read_text(errors="replace")
    assert "rediss://" in text  # the banner names the broker...
    assert PASSWORD not in text  # ...without its password
