"""NATS under authorization (PROTOCOL.md section 9): one user per role,
nobody anonymous, against real nats-server processes.

- anonymous clients are refused;
- a publisher with its credentials sets up SCORES and the feed-id bucket
  and stores events;
- a gateway (a real ``scorecast gateway`` process, credentials from its
  flags) serves snapshots, replays (JetStream reads with ordered
  consumers) and live events, end to end, and is refused when it publishes
  to ``scores.>`` (permissions violation, nothing stored);
- the shipped deploy/nats/authorization.conf is what scorecast/nats_roles.py
  grants, and nats-server accepts it.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from pathlib import Path

import nats
import nats.errors
import pytest

from scorecast.nats_roles import authorization
from scorecast.natsserver import NatsServer, find_nats_server, free_port
from scorecast.protocol.nats_auth import NatsAuth
from scorecast.publishers.connection import open_publisher
from scorecast.publishers.errors import NatsUnreachable
from scorecast.publishers.settings import PublisherSettings
from tests.support import Recorder, start_gateway
from tests.test_publishers_stream import stored_messages

REPO = Path(__file__).resolve().parents[1]
GATEWAY = NatsAuth(user="gateway", password="gateway-secret")
PUBLISHER = NatsAuth(user="publisher", password="publisher-secret")

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def secured_nats(tmp_path):
    """A nats-server with the shipped roles and known passwords."""
    (tmp_path / "js").mkdir()
    server = NatsServer(
        store_dir=str(tmp_path / "js"),
        binary=os.environ.get("NATS_SERVER_BIN"),
        log_file=str(tmp_path / "nats.log"),
        extra_config=authorization('"gateway-secret"', '"publisher-secret"'),
    )
    server.start()
    yield server
    server.stop()


async def _connect(url: str, auth: NatsAuth | None = None, errors: list | None = None):
    async def error_cb(exc: Exception) -> None:
        if errors is not None:
            errors.append(exc)

    return await nats.connect(
        url,
        allow_reconnect=False,
        max_reconnect_attempts=0,
        connect_timeout=2,
        error_cb=error_cb,
        **(auth.options() if auth else {}),
    )


async def test_anonymous_and_wrong_password_are_refused(secured_nats):
    for auth in (None, NatsAuth(user="gateway", password="guess"), NatsAuth(token="t")):
        with pytest.raises((nats.errors.Error, OSError)):
            client = await _connect(secured_nats.url, auth)
            await client.close()


async def test_a_publisher_without_credentials_gives_up_naming_the_url(secured_nats):
    with pytest.raises(NatsUnreachable, match=secured_nats.url):
        await open_publisher(
            PublisherSettings(nats=(secured_nats.url,), stream_history=10),
            name="t",
            give_up_after=2.0,
        )


async def test_publisher_and_gateway_roles_end_to_end(secured_nats):
    nc, publisher = await open_publisher(
        PublisherSettings(nats=(secured_nats.url,), stream_history=100).with_auth(PUBLISHER),
        name="t",
    )
    port = free_port()
    gateway = None
    client = None
    try:
        for minute in range(1, 4):
            await publisher.publish("match.1", "clock", {"minute": minute}, feed_id=f"c{minute}")
        gateway = await asyncio.to_thread(
            start_gateway, secured_nats.url, port, "--workers", "1",
            "--nats-user", "gateway", "--nats-password", "gateway-secret",
        )  # fmt: skip
        client = await Recorder.open(f"ws://127.0.0.1:{port}/ws")
        # a replay from seq 1 (JetStream reads), then live events
        await client.send(
            {
                "type": "subscribe",
                "id": 1,
                "topics": ["match.1", "match.2"],
                "since": {"match.1": 1},
            }
        )
        await client.wait_for(lambda m: m.get("topic") == "match.1" and m.get("seq") == 3)
        await client.wait_for(lambda m: m["type"] == "snapshot" and m["topic"] == "match.2")
        await publisher.publish("match.1", "goal", {"home": 1}, feed_id="g1")
        await publisher.publish("match.2", "kickoff", {"minute": 0})
        last = await client.wait_for(lambda m: m.get("topic") == "match.1" and m.get("seq") == 4)
        assert last["type"] == "event" and last["data"] == {"home": 1}
        await client.wait_for(lambda m: m.get("topic") == "match.2" and m.get("seq") == 1)
        frames = client.of("match.1")
        assert [m["seq"] for m in frames if m["type"] == "event"] == [2, 3, 4]
        # a repeated feed id is a duplicate, and never reaches the client
        again = await publisher.publish("match.1", "clock", {"minute": 1}, feed_id="c1")
        assert (again.duplicate, again.seq) == (True, 1)
        await publisher.publish("match.1", "clock", {"minute": 5})
        await client.wait_for(lambda m: m.get("topic") == "match.1" and m.get("seq") == 5)
        assert [m["seq"] for m in client.of("match.1")] == [2, 3, 4, 5]
    finally:
        if client is not None:
            await client.close()
        if gateway is not None:
            gateway.terminate()
            await asyncio.to_thread(gateway.wait, 10)
        await nc.close()


async def test_the_gateway_role_cannot_publish_scores_or_change_the_stream(secured_nats):
    nc, publisher = await open_publisher(
        PublisherSettings(nats=(secured_nats.url,), stream_history=100).with_auth(PUBLISHER),
        name="t",
    )
    errors: list[Exception] = []
    gateway = await _connect(secured_nats.url, GATEWAY, errors)
    try:
        await publisher.publish("match.1", "clock", {"minute": 1})
        js = gateway.jetstream(timeout=1.0)
        with pytest.raises(nats.errors.Error):
            await js.publish("scores.match.1", b'{"topic": "match.1", "seq": 2}')
        await gateway.publish("scores.match.1", b"phantom")
        await gateway.flush()
        for _ in range(50):
            if any("Permissions Violation" in str(e) for e in errors):
                break
            await asyncio.sleep(0.05)
        assert any("scores.match.1" in str(e) for e in errors), errors
        with pytest.raises(nats.errors.Error):
            await js.delete_stream("SCORES")
        # what a gateway may do: read the stream
        assert (await js.stream_info("SCORES")).state.messages == 1
        assert (await js.get_last_msg("SCORES", "scores.match.1")).data
        assert len(await stored_messages(nc.jetstream())) == 1
        # nor read the replies meant for others (a publisher's, here)
        errors.clear()
        await gateway.subscribe("_INBOX.>")
        await gateway.subscribe("_INBOX.publisher.>")
        await gateway.flush()
        for _ in range(50):
            if len(errors) >= 2:
                break
            await asyncio.sleep(0.05)
        assert sum("violation for subscription" in str(e).lower() for e in errors) == 2, errors
        # and what a publisher may not: read committed events
        with pytest.raises(nats.errors.Error):
            sub = await nc.subscribe("committed.scores.>")
            await nc.flush()
            await sub.next_msg(timeout=0.5)
    finally:
        await gateway.close()
        await nc.close()


def test_the_shipped_config_is_the_roles_and_valid():
    roles = authorization("$NATS_GATEWAY_PASSWORD", "$NATS_PUBLISHER_PASSWORD")
    for config in ("authorization.conf", "nats.conf"):  # nats.conf: docker-compose.yml
        assert roles in (REPO / "deploy" / "nats" / config).read_text(), config
    env = {"NATS_GATEWAY_PASSWORD": "a", "NATS_PUBLISHER_PASSWORD": "b", "SERVER_NAME": "nats1"}
    for config in ("authorization.conf", "nats.conf"):
        result = subprocess.run(
            [find_nats_server(os.environ.get("NATS_SERVER_BIN")), "-t", "-c",
             str(REPO / "deploy" / "nats" / config)],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + result.stdout


def test_nats_auth_options():
    assert NatsAuth().options() == {}
    assert NatsAuth(creds="/x.creds").options() == {"user_credentials": "/x.creds"}
    assert NatsAuth(user="u", password="p").options() == {
        "user": "u", "password": "p", "inbox_prefix": "_INBOX.u"
    }  # fmt: skip
    assert "inbox_prefix" not in NatsAuth(user="a.b c", password="p").options()
    assert NatsAuth(token="t").options() == {"token": "t"}
    assert "p" not in repr(NatsAuth(user="u", password="p"))
    with pytest.raises(ValueError):
        NatsAuth(user="u")
    with pytest.raises(ValueError):
        NatsAuth(user="u", password="p", token="t")
    ca = ssl.get_default_verify_paths().cafile
    if ca and Path(ca).exists():
        assert isinstance(NatsAuth(tls_ca=ca).options()["tls"], ssl.SSLContext)


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scorecast test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_publisher_over_tls_with_its_ca(tmp_path):
    ca, cert, key = _certificates(tmp_path)
    (tmp_path / "js").mkdir()
    server = NatsServer(
        store_dir=str(tmp_path / "js"),
        binary=os.environ.get("NATS_SERVER_BIN"),
        extra_config=f'tls {{ cert_file: "{cert}", key_file: "{key}" }}\n'
        + authorization('"gateway-secret"', '"publisher-secret"'),
    ).start()
    try:
        auth = NatsAuth(user="publisher", password="publisher-secret", tls_ca=str(ca))
        nc, publisher = await open_publisher(
            PublisherSettings(nats=(server.url,), stream_history=10).with_auth(auth),
            name="t",
            give_up_after=10,
        )
        try:
            assert (await publisher.publish("match.1", "clock", {"minute": 1})).seq == 1
        finally:
            await nc.close()
        with pytest.raises(NatsUnreachable):  # without the CA the server is not trusted
            await open_publisher(
                PublisherSettings(
                    nats=(server.url,),
                    stream_history=10,
                    nats_user="publisher",
                    nats_password="publisher-secret",
                ),
                name="t",
                give_up_after=2,
            )
    finally:
        server.stop()


async def test_ingest_to_client_under_authorization_from_the_command_line(secured_nats):
    """`scorecast ingest` (publisher credentials from the environment, feed
    tokens required) -> JetStream -> `scorecast gateway` (gateway credentials)
    -> a WebSocket client."""
    import time
    import urllib.request

    import aiohttp
    import jwt

    secret = "feed-secret-of-at-least-thirty-two-bytes"
    ingest_port, gateway_port = free_port(), free_port()
    env = {
        **os.environ,
        "SCORECAST_NATS_USER": "publisher",
        "SCORECAST_NATS_PASSWORD": "publisher-secret",
        "SCORECAST_JWT_SECRET": secret,
    }
    ingest = subprocess.Popen(
        [sys.executable, "-m", "scorecast.cli", "--log-level", "warning", "ingest",
         "--nats", secured_nats.url, "--port", str(ingest_port)],
        env=env,
    )  # fmt: skip
    gateway = client = None
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ingest_port}/readyz", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline and ingest.poll() is None, "no ingest"
                await asyncio.sleep(0.1)
        gateway = await asyncio.to_thread(
            start_gateway, secured_nats.url, gateway_port, "--workers", "1",
            "--nats-user", "gateway", "--nats-password", "gateway-secret",
        )  # fmt: skip
        client = await Recorder.open(f"ws://127.0.0.1:{gateway_port}/ws")
        await client.send({"type": "subscribe", "id": 1, "topics": ["match.5"]})
        await client.wait_for(lambda m: m["type"] == "snapshot")
        token = jwt.encode({"exp": int(time.time()) + 60, "publish": ["match.*"]}, secret)
        item = {"topic": "match.5", "kind": "goal", "data": {"home": 1}, "id": "g-5-1"}
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{ingest_port}/v1/events"
            headers = {"Content-Type": "application/json"}
            async with session.post(url, json=[item], headers=headers) as response:
                assert response.status == 401
            headers["Authorization"] = f"Bearer {token}"
            async with session.post(url, json=[item], headers=headers) as response:
                assert response.status == 202
                assert (await response.json())["accepted"][0]["seq"] == 1
        event = await client.wait_for(lambda m: m["type"] == "event")
        assert (event["topic"], event["seq"], event["data"]) == ("match.5", 1, {"home": 1})
    finally:
        if client is not None:
            await client.close()
        for process in (gateway, ingest):
            if process is not None:
                process.terminate()
                await asyncio.to_thread(process.wait, 10)
