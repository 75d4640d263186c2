"""TLS and credentials towards Loki, with the real shipper and real TLS on loopback.

A throwaway PKI (a CA, a server certificate for 127.0.0.1, a client
certificate) is made once per session with the `openssl` command line tool,
which CI must provide. The receiver serves https with it; the shipper must
verify it (ca_file), refuse it when it is not trusted, skip verification only
when told to (loudly), present a client certificate, and send a bearer token
or basic-auth password read from files that it re-reads when they change,
without ever printing them.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shipper.config import Config, LokiConfig, dump, parse
from tests.conftest import make_config, open_fifo_writer
from tests.loki_receiver import Action, LokiReceiver
from tests.shipper_process import ShipperProcess

INSECURE_WARNING = ("TLS CERTIFICATE VERIFICATION IS OFF (loki.insecure_skip_verify = true): "
                    "anyone on the path can read and alter the logs and the credentials")
PLAIN_HTTP_WARNING = "credentials are sent over plain http (loki.url is not https://)"


# --- a throwaway PKI ----------------------------------------------------------------

@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context


def _openssl(cwd: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def _leaf(cwd: Path, name: str, subject: str, extensions: str) -> None:
    (cwd / f"{name}.ext").write_text(
        "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n" + extensions)
    _openssl(cwd, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
    _openssl(cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-set_serial", str(secrets.randbits(63)), "-days", "2", "-out", f"{name}.crt",
             "-extfile", f"{name}.ext")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.fail("these tests need the openssl command line tool (apt-get install openssl)")
    d = tmp_path_factory.mktemp("pki")
    _openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=shipper test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash")
    _leaf(d, "server", "/CN=127.0.0.1",
          "extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1, DNS:localhost\n")
    _leaf(d, "client", "/CN=shipper test client", "extendedKeyUsage = clientAuth\n")
    return Pki(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")


@pytest.fixture
async def tls_receiver(pki: Pki) -> AsyncIterator[LokiReceiver]:
    rx = LokiReceiver(ssl_context=pki.server_context())
    await rx.start()
    try:
        yield rx
    finally:
        await rx.stop()


# --- helpers ------------------------------------------------------------------------

async def start_on_fifo(tmp_path: Path, url: str, **loki: object) -> tuple[ShipperProcess, int]:
    """The shipper reading a FIFO; returns it and the FIFO's write end (open)."""
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    proc = await ShipperProcess.start(make_config(url, [(fifo, "stdout")], loki=loki, shutdown_timeout=0.5))
    await proc.wait_for_event("source_opened", path=str(fifo))
    return proc, open_fifo_writer(fifo)


async def write_and_await(fd: int, receiver: LokiReceiver, line: str) -> None:
    """Write one line and wait until Loki stored it (the push that carried it is the last with entries)."""
    before = receiver.count(stream="stdout")
    await asyncio.to_thread(os.write, fd, (line + "\n").encode())
    await receiver.wait_for_entries(before + 1, stream="stdout", timeout=20)


def last_authorization(receiver: LokiReceiver) -> str | None:
    stored = [r for r in receiver.requests if r.stored]
    return stored[-1].headers.get("authorization")


def loaded_files(pid: int) -> set[str]:
    """Shared objects and files mapped into the process (what costs memory)."""
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split(maxsplit=5)[5].strip() for line in maps if len(line.split(maxsplit=5)) == 6}


def loads_openssl(pid: int) -> bool:
    return any("/_ssl." in path or "libssl" in path for path in loaded_files(pid))


def replace_atomically(path: Path, text: str) -> None:
    """How the kubelet updates a secret mount: a new file renamed into place."""
    partial = path.with_name(path.name + ".new")
    partial.write_text(text)
    partial.replace(path)


async def scrape_metrics(proc: ShipperProcess) -> str:
    record = await proc.wait_for_event("metrics_listening")
    reader, writer = await asyncio.open_connection("127.0.0.1", record["port"])
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data.decode("utf-8", "replace")


# --- TLS ----------------------------------------------------------------------------

async def test_https_with_ca_file_delivers(tmp_path: Path, pki: Pki, tls_receiver: LokiReceiver) -> None:
    assert tls_receiver.url.startswith("https://127.0.0.1:")
    proc, fd = await start_on_fifo(tmp_path, tls_receiver.url, ca_file=str(pki.ca))
    try:
        for i in range(3):
            await write_and_await(fd, tls_receiver, f"line {i} over https")
        # The positive control of test_http_url_never_loads_openssl: this check can see it.
        assert loads_openssl(proc.proc.pid)
    finally:
        os.close(fd)
    assert await proc.wait() == 0
    assert tls_receiver.lines(stream="stdout") == [f"line {i} over https" for i in range(3)]
    assert proc.events("tls_verify_off") == []


async def test_untrusted_server_certificate_fails_clearly_and_is_retried(
        tmp_path: Path, tls_receiver: LokiReceiver) -> None:
    # No ca_file: the system CAs, which never signed the test CA.
    proc, fd = await start_on_fifo(tmp_path, tls_receiver.url)
    try:
        os.write(fd, b"a\nb\nc\n")
        first = await proc.wait_for_event("push_failed")
        await proc.wait_for_event("push_failed", count=2)  # retried, not given up
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 1
    finally:
        os.close(fd)
    assert first["outcome"] == "transport_error"
    assert first["error"].startswith("TLSCertificateError: certificate of 127.0.0.1:")
    assert "not trusted" in first["error"] and "loki.ca_file" in first["error"]
    assert proc.summary()["dropped"]["shutdown_deadline"] == 3
    assert tls_receiver.requests == []  # no HTTP request ever got through the handshake


async def test_insecure_skip_verify_delivers_and_warns(tmp_path: Path, tls_receiver: LokiReceiver) -> None:
    proc, fd = await start_on_fifo(tmp_path, tls_receiver.url, insecure_skip_verify=True)
    try:
        warning = await proc.wait_for_event("tls_verify_off")
        await write_and_await(fd, tls_receiver, "unverified")
    finally:
        os.close(fd)
    assert await proc.wait() == 0
    assert warning["level"] == "warn" and warning["url"] == tls_receiver.url
    assert warning["msg"] == INSECURE_WARNING  # the wording is the point: loud, and says what it risks
    assert tls_receiver.lines(stream="stdout") == ["unverified"]


async def test_a_ca_file_rotated_while_pushes_fail_is_used_by_the_next_connection(
        tmp_path: Path, pki: Pki, tls_receiver: LokiReceiver) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki.client_cert.read_bytes())  # a certificate, but not the one that signed the server's
    proc, fd = await start_on_fifo(tmp_path, tls_receiver.url, ca_file=str(ca_file))
    try:
        await asyncio.to_thread(os.write, fd, b"kept until the CA is right\n")
        failed = await proc.wait_for_event("push_failed")
        assert "not trusted" in failed["error"]
        replace_atomically(ca_file, pki.ca.read_text())  # as cert-manager or the kubelet does
        await tls_receiver.wait_for_entries(1, stream="stdout")
    finally:
        os.close(fd)
    assert await proc.wait() == 0
    assert tls_receiver.lines(stream="stdout") == ["kept until the CA is right"]
    (reloaded,) = proc.events("tls_reloaded")
    assert reloaded["files"] == [str(ca_file)]


async def test_client_certificate_required_by_the_server(tmp_path: Path, pki: Pki) -> None:
    async with LokiReceiver(ssl_context=pki.server_context(require_client_cert=True)) as rx:
        # Control: without a client certificate the server refuses every push.
        (tmp_path / "without").mkdir()
        proc, fd = await start_on_fifo(tmp_path / "without", rx.url, ca_file=str(pki.ca))
        try:
            os.write(fd, b"refused\n")
            await proc.wait_for_event("push_failed", count=2)
            proc.signal(signal.SIGTERM)
            assert await proc.wait() == 1
        finally:
            os.close(fd)
        assert rx.count() == 0

        (tmp_path / "with").mkdir()
        proc, fd = await start_on_fifo(tmp_path / "with", rx.url, ca_file=str(pki.ca),
                                       cert_file=str(pki.client_cert), key_file=str(pki.client_key))
        try:
            await write_and_await(fd, rx, "mutual TLS")
        finally:
            os.close(fd)
        assert await proc.wait() == 0
        assert rx.lines(stream="stdout") == ["mutual TLS"]


# --- credentials ----------------------------------------------------------------------

async def test_bearer_token_follows_its_file_and_is_never_shown(
        tmp_path: Path, pki: Pki, tls_receiver: LokiReceiver) -> None:
    tokens = [f"tok-{secrets.token_hex(16)}" for _ in range(3)]
    token_file = tmp_path / "token"
    token_file.write_text(tokens[0] + "\n")  # `echo $TOKEN > file`: the newline is not part of it
    proc, fd = await start_on_fifo(tmp_path, tls_receiver.url, ca_file=str(pki.ca), tenant_id="team-a",
                                   bearer_token_file=str(token_file))
    try:
        await write_and_await(fd, tls_receiver, "one")
        assert last_authorization(tls_receiver) == f"Bearer {tokens[0]}"
        assert tls_receiver.requests[-1].tenant == "team-a"

        replace_atomically(token_file, tokens[1] + "\n")  # the secret was rotated
        await write_and_await(fd, tls_receiver, "two")
        assert last_authorization(tls_receiver) == f"Bearer {tokens[1]}"

        token_file.unlink()  # unreadable for a while: the last good token is kept
        await write_and_await(fd, tls_receiver, "three")
        assert last_authorization(tls_receiver) == f"Bearer {tokens[1]}"
        warning = await proc.wait_for_event("credential_unreadable")
        await write_and_await(fd, tls_receiver, "four")
        assert last_authorization(tls_receiver) == f"Bearer {tokens[1]}"

        replace_atomically(token_file, tokens[2])  # back, without a newline this time
        await write_and_await(fd, tls_receiver, "five")
        assert last_authorization(tls_receiver) == f"Bearer {tokens[2]}"

        metrics = await scrape_metrics(proc)
    finally:
        os.close(fd)
    assert await proc.wait() == 0
    assert tls_receiver.lines(stream="stdout") == ["one", "two", "three", "four", "five"]
    assert warning == {**warning, "level": "warn", "key": "loki.bearer_token_file", "path": str(token_file)}
    assert len(proc.events("credential_unreadable")) == 1  # once, not at every push
    assert len(proc.events("credential_reread")) == 2
    # Every push, the exit summary's too, was authorised.
    assert all(r.headers.get("authorization", "").startswith("Bearer tok-") for r in tls_receiver.requests)
    shown = "\n".join(proc.stderr_text) + "\n".join(proc.stdout_lines) + metrics
    assert "shipper_" in metrics
    for token in tokens:
        assert token not in shown
    assert str(token_file) in shown  # the path is fine to show


async def test_a_token_rotated_while_its_push_was_refused_is_retried_with_the_new_one(
        tmp_path: Path, receiver: LokiReceiver) -> None:
    old, new = (f"tok-{secrets.token_hex(16)}" for _ in range(2))
    token_file = tmp_path / "token"
    token_file.write_text(old)
    proc, fd = await start_on_fifo(tmp_path, receiver.url, bearer_token_file=str(token_file))
    try:
        # Loki refuses the push that carried the old token, after the kubelet rotated the file.
        gate = asyncio.Event()
        receiver.add_actions(Action.status(401, "invalid token", gate=gate))
        await asyncio.to_thread(os.write, fd, b"raced\n")
        await receiver.wait_for_requests(1)
        replace_atomically(token_file, new)
        gate.set()
        await receiver.wait_for_entries(1, stream="stdout")
        # Control: a refusal of the token the file still holds is final, as any 401.
        receiver.add_actions(Action.status(401, "invalid token"))
        await asyncio.to_thread(os.write, fd, b"refused\n")
        await proc.wait_for_event("push_refused", outcome="401")
    finally:
        os.close(fd)
    assert await proc.wait() == 0
    assert [(r.action, r.headers.get("authorization")) for r in receiver.requests[:4]] == [
        ("status", f"Bearer {old}"), ("ok", f"Bearer {new}"), ("status", f"Bearer {new}"), ("ok", f"Bearer {new}")]
    assert receiver.lines(stream="stdout") == ["raced"]
    assert proc.summary()["dropped"]["rejected"] == 1
    assert len(proc.events("credential_stale_retry")) == 1


async def test_basic_auth_over_http_sends_the_header_and_warns(tmp_path: Path, receiver: LokiReceiver) -> None:
    password = f"p@ss:{secrets.token_hex(8)} with spaces"
    password_file = tmp_path / "password"
    password_file.write_text(password + "\r\n")
    proc, fd = await start_on_fifo(tmp_path, receiver.url, basic_auth_user="airflow",
                                   basic_auth_password_file=str(password_file))
    try:
        await write_and_await(fd, receiver, "basic")
        header = last_authorization(receiver)
        # Credentials do not pull in OpenSSL either.
        assert not loads_openssl(proc.proc.pid)
    finally:
        os.close(fd)
    assert await proc.wait() == 0
    assert header is not None and header.startswith("Basic ")
    assert base64.b64decode(header[6:]).decode() == f"airflow:{password}"
    (warning,) = proc.events("credentials_over_http")
    assert (warning["msg"], warning["url"]) == (PLAIN_HTTP_WARNING, receiver.url)  # it names the risk
    assert password not in "\n".join(proc.stderr_text)
    assert header[6:] not in "\n".join(proc.stderr_text)


async def test_check_config_shows_paths_never_secrets(tmp_path: Path) -> None:
    token = f"tok-{secrets.token_hex(16)}"
    token_file = tmp_path / "token"
    token_file.write_text(token)
    config = f'[loki]\nurl = "https://loki:3100/loki/api/v1/push"\nbearer_token_file = "{token_file}"\n'
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "shipper", "check-config"], capture_output=True, text=True,
        env={**os.environ, "SHIPPER_CONFIG": config}, check=False)
    assert done.returncode == 0, done.stderr
    assert f'bearer_token_file = "{token_file}"' in done.stdout
    assert "insecure_skip_verify = false" in done.stdout
    assert token not in done.stdout + done.stderr


def test_dump_with_every_tls_and_auth_key_parses_back() -> None:
    loki = LokiConfig(url="https://loki:443/loki/api/v1/push", ca_file="/ca.pem", cert_file="/c.pem",
                      key_file="/k.pem", basic_auth_user="u", basic_auth_password_file="/p")
    for config in (Config(loki=loki), Config(loki=LokiConfig(url=loki.url, insecure_skip_verify=True,
                                                             bearer_token_file="/t"))):
        assert parse(dump(config)) == config


# --- memory: http:// never loads OpenSSL (FACTS §6) ----------------------------------

async def test_http_url_never_loads_openssl(tmp_path: Path, receiver: LokiReceiver) -> None:
    proc, fd = await start_on_fifo(tmp_path, receiver.url)
    try:
        await write_and_await(fd, receiver, "plain")  # a connection was made, a push answered
        assert not loads_openssl(proc.proc.pid)
    finally:
        os.close(fd)
    assert await proc.wait() == 0


# --- refusals: exit 2, naming the key, nothing started ---------------------------------

def _refusal_cases(tmp: Path, pki: Pki) -> dict[str, tuple[dict[str, object], str]]:
    (tmp / "empty").write_text("\n")
    (tmp / "spaced").write_text("secret with-a-space\n")
    (tmp / "notpem").write_text("not a certificate\n")
    (tmp / "dir").mkdir()
    https = {"url": "https://127.0.0.1:9/loki/api/v1/push"}
    missing = str(tmp / "missing")
    return {
        "missing token file": ({"bearer_token_file": missing},
                               f"loki.bearer_token_file: cannot read {missing}: No such file or directory"),
        "empty token file": ({"bearer_token_file": str(tmp / "empty")}, "loki.bearer_token_file: "),
        "token with a space": ({"bearer_token_file": str(tmp / "spaced")}, "loki.bearer_token_file: "),
        "token file is a directory": ({"bearer_token_file": str(tmp / "dir")}, "loki.bearer_token_file: "),
        "missing password file": ({"basic_auth_user": "u", "basic_auth_password_file": missing},
                                  "loki.basic_auth_password_file: cannot read"),
        "password without user": ({"basic_auth_password_file": str(tmp / "empty")},
                                  "loki.basic_auth_user: needed with loki.basic_auth_password_file"),
        "user without password": ({"basic_auth_user": "u"},
                                  "loki.basic_auth_password_file: needed with loki.basic_auth_user"),
        "user with a colon": ({"basic_auth_user": "a:b", "basic_auth_password_file": missing},
                              "loki.basic_auth_user: must not contain ':'"),
        "bearer and basic": ({"bearer_token_file": missing, "basic_auth_user": "u",
                              "basic_auth_password_file": missing},
                             "loki.bearer_token_file: cannot be combined with loki.basic_auth_user"),
        "cert without key": ({**https, "cert_file": str(pki.client_cert)},
                             "loki.key_file: needed with loki.cert_file"),
        "key without cert": ({**https, "key_file": str(pki.client_key)},
                             "loki.cert_file: needed with loki.key_file"),
        "ca_file on http": ({"ca_file": str(pki.ca)}, "loki.ca_file: only used with an https:// loki.url"),
        "insecure on http": ({"insecure_skip_verify": True}, "loki.insecure_skip_verify: only used with an https://"),
        "cert on http": ({"cert_file": str(pki.client_cert), "key_file": str(pki.client_key)},
                         "loki.cert_file: only used with an https://"),
        "insecure with ca_file": ({**https, "insecure_skip_verify": True, "ca_file": str(pki.ca)},
                                  "loki.insecure_skip_verify: cannot be combined with loki.ca_file"),
        "insecure not a bool": ({**https, "insecure_skip_verify": "yes"},
                                "loki.insecure_skip_verify: expected true or false, got a string"),
        "missing ca_file": ({**https, "ca_file": missing}, f"loki.ca_file: cannot read {missing}"),
        "ca_file not PEM": ({**https, "ca_file": str(tmp / "notpem")}, "loki.ca_file: cannot load CA certificates"),
        "missing key file": ({**https, "cert_file": str(pki.client_cert), "key_file": missing},
                             f"loki.key_file: cannot read {missing}"),
        "key of another certificate": ({**https, "cert_file": str(pki.client_cert), "key_file": str(pki.server_key)},
                                       "loki.cert_file: cannot load the client certificate"),
    }


REFUSALS = ["missing token file", "empty token file", "token with a space", "token file is a directory",
            "missing password file", "password without user", "user without password", "user with a colon",
            "bearer and basic", "cert without key", "key without cert", "ca_file on http", "insecure on http",
            "cert on http", "insecure with ca_file", "insecure not a bool", "missing ca_file", "ca_file not PEM",
            "missing key file", "key of another certificate"]


@pytest.mark.parametrize("case", REFUSALS)
async def test_bad_tls_or_auth_settings_exit_2_naming_the_key(tmp_path: Path, pki: Pki, case: str) -> None:
    loki, expected = _refusal_cases(tmp_path, pki)[case]
    source = tmp_path / "task.log"
    source.write_text("")
    url = str(loki.pop("url", "http://127.0.0.1:9/loki/api/v1/push"))
    proc = await ShipperProcess.start(make_config(url, [(source, "stdout")], loki=loki))
    assert await proc.wait() == 2
    (refusal,) = proc.events("refusing_to_start")
    assert refusal["error"].startswith(expected), refusal["error"]
    assert proc.events("starting") == []
    assert "secret with-a-space" not in "\n".join(proc.stderr_text)


def test_refusal_cases_are_all_listed(tmp_path: Path, pki: Pki) -> None:
    assert sorted(_refusal_cases(tmp_path, pki)) == sorted(REFUSALS)
