"""Client construction (``kafka_io.clients``): every client gets its connection from one function."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from kafka_io import clients
from kafka_io.clients import KafkaConnection, KafkaUnavailable, check, connection, faust_broker_options
from schemas.settings import Settings
from tests.e2e.service import free_port


def test_a_connection_comes_from_settings_or_a_bootstrap_string() -> None:
    settings = Settings(kafka_bootstrap="k1:9092,k2:9092")
    assert KafkaConnection.of(settings) == KafkaConnection("k1:9092,k2:9092")
    assert connection(settings) == {"bootstrap_servers": "k1:9092,k2:9092"}
    assert connection(KafkaConnection("k3:1")) == {"bootstrap_servers": "k3:1"}


def test_the_faust_broker_is_the_same_connection() -> None:
    assert faust_broker_options(Settings(kafka_bootstrap="k1:9092,k2:9093")) == {
        "broker": ["kafka://k1:9092", "kafka://k2:9093"]
    }


class Recorder:
    def __init__(self, *topics: str, **options: Any) -> None:
        self.topics, self.options = topics, options


@pytest.mark.parametrize(
    ("build", "cls"),
    [
        (clients.consumer, "AIOKafkaConsumer"),
        (clients.producer, "AIOKafkaProducer"),
        (clients.admin, "AIOKafkaAdminClient"),
    ],
)
def test_every_client_gets_the_connection_and_its_own_options(
    build: Any, cls: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clients, cls, Recorder)
    client = build(KafkaConnection("k1:9092,k2:9092"), client_id="me", request_timeout_ms=1234)
    assert client.options == {"bootstrap_servers": "k1:9092,k2:9092", "client_id": "me", "request_timeout_ms": 1234}


def test_a_consumer_subscribes_to_the_topics_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clients, "AIOKafkaConsumer", Recorder)
    client = clients.consumer(Settings(kafka_bootstrap="k1:1"), "t1", "t2", group_id="g")
    assert client.topics == ("t1", "t2") and client.options == {"bootstrap_servers": "k1:1", "group_id": "g"}


def test_a_real_client_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    async def make() -> Any:
        consumer = clients.consumer(KafkaConnection("k1:9092"), "t1", client_id="me")
        try:
            return consumer._client._bootstrap_servers, consumer._client._client_id
        finally:
            await consumer.stop()

    assert asyncio.run(make()) == ("k1:9092", "me")


# --- security (SCORESTREAM_KAFKA_SECURITY_PROTOCOL and friends) ---------------------------------------
@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    import trustme

    path = tmp_path / "ca.pem"
    path.write_bytes(trustme.CA().cert_pem.bytes())
    return path


def sasl_ssl(ca_file: Path, **more: Any) -> Settings:
    return Settings(
        kafka_bootstrap="k1:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="alice",
        kafka_sasl_password=SecretStr("s3cret-pw"),
        kafka_ssl_ca_file=ca_file,
        **more,
    )


def test_sasl_ssl_settings_give_every_client_tls_and_sasl(ca_file: Path) -> None:
    options = connection(sasl_ssl(ca_file))
    context = options.pop("ssl_context")
    assert options == {
        "bootstrap_servers": "k1:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": "s3cret-pw",
    }
    assert isinstance(context, ssl.SSLContext) and context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED and context.get_ca_certs()  # our CA, loaded
    assert connection(sasl_ssl(ca_file))["ssl_context"] is context  # one context, shared


def test_the_password_is_in_no_repr(ca_file: Path) -> None:
    settings = sasl_ssl(ca_file, kafka_ssl_check_hostname=False)
    kafka = KafkaConnection.of(settings)
    assert "s3cret-pw" not in repr(kafka) and "s3cret-pw" not in repr(settings)
    assert "s3cret-pw" not in kafka.describe() and kafka.describe() == "SASL_SSL SCRAM-SHA-512 as 'alice'"
    assert kafka.ssl_context() is not None and not kafka.ssl_context().check_hostname  # type: ignore[union-attr]


def test_tls_without_sasl_and_sasl_without_tls(ca_file: Path) -> None:
    tls = connection(Settings(kafka_bootstrap="k:1", kafka_security_protocol="SSL", kafka_ssl_ca_file=ca_file))
    assert tls["security_protocol"] == "SSL" and isinstance(tls["ssl_context"], ssl.SSLContext)
    assert not {"sasl_mechanism", "sasl_plain_username", "sasl_plain_password"} & set(tls)
    plain = connection(
        Settings(
            kafka_bootstrap="k:1",
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="PLAIN",
            kafka_sasl_username="u",
            kafka_sasl_password=SecretStr("p"),
        )
    )
    assert plain == {
        "bootstrap_servers": "k:1",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
    }


def test_faust_gets_the_same_security_for_every_client_it_builds(ca_file: Path) -> None:
    """Faust maps broker_credentials to aiokafka arguments (its consumer, consumer thread and
    producers): the same as every other client's."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    for settings in (
        sasl_ssl(ca_file),
        Settings(kafka_bootstrap="k1:9093", kafka_security_protocol="SSL", kafka_ssl_ca_file=ca_file),
        Settings(
            kafka_bootstrap="k1:9093",
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="SCRAM-SHA-256",
            kafka_sasl_username="u",
            kafka_sasl_password=SecretStr("p"),
        ),
    ):
        options = faust_broker_options(settings)
        assert options["broker"] == ["kafka://k1:9093"]
        faust_auth = credentials_to_aiokafka_auth(options["broker_credentials"])
        ours = {k: v for k, v in connection(settings).items() if k != "bootstrap_servers"}
        assert {k: v for k, v in faust_auth.items() if v is not None} == ours
    assert "broker_credentials" not in faust_broker_options(Settings(kafka_bootstrap="k1:1"))


def test_the_password_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-a-file\n")
    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="u",
        kafka_sasl_password_file=secret,
    )
    assert connection(settings)["sasl_plain_password"] == "from-a-file"  # the trailing newline dropped
    assert settings.in_namespace("other").kafka_password == SecretStr("from-a-file")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "SASL_SSL needs SCORESTREAM_KAFKA_SASL_MECHANISM, "),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "u"},
            "needs SCORESTREAM_KAFKA_SASL_PASSWORD",
        ),
        ({"kafka_sasl_password": "leaky-pw"}, "SCORESTREAM_KAFKA_SASL_PASSWORD set but"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_ca_file": "/no/such/ca.pem"},
            "SCORESTREAM_KAFKA_SSL_CA_FILE: no",
        ),
        ({"kafka_ssl_ca_file": "/etc/hostname"}, "PLAINTEXT uses no TLS"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_key_file": "/etc/hostname"},
            "KEY_FILE needs SCORESTREAM_KAFKA_SSL_CERT",
        ),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "PLAIN",
                "kafka_sasl_username": "u",
                "kafka_sasl_password_file": "/no/such/password",
            },
            "SCORESTREAM_KAFKA_SASL_PASSWORD_FILE: no such file",
        ),
        (
            {"kafka_sasl_password": "leaky-pw", "kafka_sasl_password_file": "/etc/hostname"},
            "SCORESTREAM_KAFKA_SASL_PASSWORD or SCORESTREAM_KAFKA_SASL_PASSWORD_FILE, not both",
        ),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
    ],
)
def test_a_wrong_security_setting_is_refused_naming_the_variable(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(**values)
    assert message in str(refused.value)
    assert "leaky-pw" not in str(refused.value)  # hide_input_in_errors: never the secret


def test_hosts_of_the_bootstrap_servers() -> None:
    assert KafkaConnection("a:1, b:2,[::1]:3,c").hosts() == [("a", 1), ("b", 2), ("::1", 3), ("c", 9092)]
    assert KafkaConnection("a:1").at("b:2") == KafkaConnection("b:2")


def test_the_preflight_gives_up_on_an_unreachable_cluster_with_one_line() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable) as failed:
        asyncio.run(check(KafkaConnection(f"127.0.0.1:{port}"), timeout_s=1.5, retry_s=0.3))
    assert time.monotonic() - started < 10
    message = str(failed.value)
    assert message.startswith(f"Kafka unreachable at 127.0.0.1:{port} (PLAINTEXT) within 1.5 s: ")
    assert "\n" not in message and "SCORESTREAM_KAFKA_BOOTSTRAP" in message


@pytest.mark.kafka
def test_the_preflight_passes_on_a_reachable_cluster(kafka_bootstrap: str) -> None:
    assert asyncio.run(check(KafkaConnection(kafka_bootstrap), timeout_s=30)) == 1


def test_an_encrypted_client_key_loads_with_its_password_and_is_refused_without(tmp_path: Path, ca_file: Path) -> None:
    import trustme
    from cryptography.hazmat.primitives import serialization

    leaf = trustme.CA().issue_cert("client")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    (tmp_path / "client.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"key-pw-123"),
        )
    )
    (tmp_path / "client.pem").write_bytes(leaf.cert_chain_pems[0].bytes())
    tls: dict[str, Any] = {
        "kafka_security_protocol": "SSL",
        "kafka_ssl_ca_file": ca_file,
        "kafka_ssl_cert_file": tmp_path / "client.pem",
        "kafka_ssl_key_file": tmp_path / "client.key",
    }
    context = connection(Settings(**tls, kafka_ssl_key_password=SecretStr("key-pw-123")))["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    wrongs: list[dict[str, Any]] = [{}, {"kafka_ssl_key_password": SecretStr("not-the-pw")}]
    for wrong in wrongs:  # never a prompt on the terminal
        with pytest.raises(ValidationError) as refused:
            Settings(**tls, **wrong)
        assert "SCORESTREAM_KAFKA_SSL_CERT_FILE, SCORESTREAM_KAFKA_SSL_KEY_FILE: the client certificate" in str(
            refused.value
        )
        assert "not-the-pw" not in str(refused.value)


def test_a_ca_file_that_is_no_certificate_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(ValidationError, match="SCORESTREAM_KAFKA_SSL_CA_FILE: no PEM CA certificate loads"):
        Settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=tmp_path / "ca.pem")


def test_the_preflight_refuses_tls_files_that_do_not_load(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    kafka = KafkaConnection("127.0.0.1:1", "SSL", ssl_ca_file=str(tmp_path / "ca.pem"))
    with pytest.raises(KafkaUnavailable, match=r"^Kafka TLS: the CA, certificate or key files do not load: "):
        asyncio.run(check(kafka, timeout_s=5))
