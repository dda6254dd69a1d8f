"""The control plane over TLS (with client certificates) and with username/password."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cascade_celery import DEFERRED, Cascade
from cascade_celery.errors import ControlPlaneUnavailable
from tests.e2e.conftest import StartWorker, app_from_env
from tests.harness.mosquitto import MosquittoServer
from tests.harness.tls import Certificates, make_certificates
from tests.harness.waiting import free_port, wait_for

USER, PASSWORD = "ops", "s3cret pass"


class SecuredMosquitto(MosquittoServer):
    """Mosquitto with a password listener and a TLS listener requiring client certs."""

    def __init__(self, directory: Path, certs: Certificates) -> None:
        super().__init__(directory)
        self.certs = certs
        self.password_port = free_port()
        self.tls_port = free_port()
        self.password_file = self.directory / "passwd"
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(self.password_file), USER, PASSWORD],
                       check=True, capture_output=True, timeout=30)  # fmt: skip

    def extra_listeners(self) -> list[str]:
        auth = f"allow_anonymous false\npassword_file {self.password_file}"
        return [
            f"listener {self.password_port} 127.0.0.1\n{auth}",
            f"listener {self.tls_port} 127.0.0.1\n{auth}\n"
            f"cafile {self.certs.ca}\ncertfile {self.certs.server_cert}\n"
            f"keyfile {self.certs.server_key}\nrequire_certificate true",
        ]


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "certs")


@pytest.fixture
def secured(tmp_path: Path, certs: Certificates) -> Iterator[SecuredMosquitto]:
    server = SecuredMosquitto(tmp_path / "secured", certs)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["password", "tls"])
def secured_env(
    request: pytest.FixtureRequest,
    worker_env: dict[str, str],
    secured: SecuredMosquitto,
    certs: Certificates,
) -> dict[str, str]:
    """Worker settings for the password listener or the TLS + client certificate one."""
    if request.param == "password":
        url = f"mqtt://{USER}:s3cret%20pass@127.0.0.1:{secured.password_port}"
        return {**worker_env, "CASCADE_TEST_MQTT": url}
    return {
        **worker_env,
        "CASCADE_TEST_MQTT": f"mqtts://{USER}:s3cret%20pass@127.0.0.1:{secured.tls_port}",
        "CASCADE_TEST_MQTT_CA_CERTS": str(certs.ca),
        "CASCADE_TEST_MQTT_CERTFILE": str(certs.client_cert),
        "CASCADE_TEST_MQTT_KEYFILE": str(certs.client_key),
    }


def test_constraints_flow_over_an_authenticated_connection(
    secured_env: dict[str, str], start_worker: StartWorker
) -> None:
    app = app_from_env(secured_env)
    cascade = Cascade.for_app(app)
    start_worker(pool="threads", concurrency=2, **secured_env)

    cascade.pause("task:gated.work", wait=30)
    held = app.tasks["gated.work"].delay("x", 0.01)
    wait_for(lambda: held.state == DEFERRED, timeout=30)
    cascade.resume("task:gated.work")

    assert held.get(timeout=30) == "x"
    cascade.close()


def test_a_wrong_password_is_refused_clearly(
    worker_env: dict[str, str], secured: SecuredMosquitto, start_worker: StartWorker
) -> None:
    url = f"mqtt://{USER}:Wr0ngPw@127.0.0.1:{secured.password_port}"
    env = {**worker_env, "CASCADE_TEST_MQTT": url}
    app = app_from_env(env)

    with pytest.raises(ControlPlaneUnavailable, match="refused the connection"):
        Cascade.for_app(app).pause("task:gated.work")
    worker = start_worker(pool="threads", concurrency=1, **env)
    wait_for(lambda: "refused the connection" in worker.log_text(), timeout=30)
    assert "***@127.0.0.1" in worker.log_text()  # the password is never logged
    assert "Wr0ngPw" not in worker.log_text()
