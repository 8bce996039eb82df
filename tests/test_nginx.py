"""The real nginx (Debian's /usr/sbin/nginx) in front of a real gunicorn, configured as deployed.

deploy/nginx.conf and the snippets it includes are copied as they are into a throw-away prefix
laid out like the nginx image (the site in conf.d/, the snippets beside the main file); only the
addresses change: `web:5000` becomes the test's gunicorn and the listening ports become free
local ones. Then the tests talk to nginx the way any client would.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
import requests

from tests.processes import ROOT, Process, free_port, wait_for

NGINX = "/usr/sbin/nginx"
DEPLOY = ROOT / "deploy"
INCLUDE = re.compile(r"^\s*include\s+(\S+);", re.M)
WEBSOCKETS_PER_ADDRESS = 20
# The main file of the nginx image, reduced to what a server needs; every path nginx writes
# lives under the prefix, so it runs unprivileged and side by side with other instances.
MAIN_CONF = """\
user {user};
worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    include conf.d/*.conf;
}}
"""


def rewrite(text: str, old: str, new: str) -> str:
    """Replace `old`, failing loudly if the deployed file no longer contains it."""
    assert old in text, f"{old!r} is no longer in the deployed nginx configuration"
    return text.replace(old, new)


def install(
    prefix: Path, site: str, upstream: str, ports: dict[str, int], certs: Path | None = None
) -> Path:
    """Lay out deploy/<site> and the files it includes under prefix; return the main file."""
    (prefix / "conf.d").mkdir(parents=True)
    (prefix / "temp").mkdir()
    site_text = (DEPLOY / site).read_text()
    for listen, port in ports.items():
        site_text = rewrite(site_text, f"listen {listen} ", f"listen 127.0.0.1:{port} ")
    if certs is not None:
        site_text = rewrite(site_text, "/etc/nginx/certs/", f"{certs}/")
    (prefix / "conf.d" / "default.conf").write_text(site_text)
    # Relative includes resolve against the main file's directory, as in the image.
    included = {name: (DEPLOY / name).read_text() for name in INCLUDE.findall(site_text)}
    upstream_file = next(name for name, text in included.items() if "server web:5000;" in text)
    included[upstream_file] = rewrite(
        included[upstream_file], "server web:5000;", f"server {upstream};"
    )
    for name, text in included.items():
        (prefix / name).write_text(text)
    main = prefix / "nginx.conf"
    main.write_text(MAIN_CONF.format(user=getpass.getuser(), prefix=prefix))
    return main


def nginx_args(prefix: Path, main: Path, *extra: str) -> list[str]:
    globals_ = f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/error.log;"
    return [NGINX, "-p", f"{prefix}/", "-c", str(main), "-g", globals_, *extra]


def accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def start_nginx(tmp_path):
    """Factory: start_nginx(site, upstream, listens, certs) -> {listen: its free port}."""
    started: list[Process] = []

    def start(site: str, upstream: str, listens=("80",), certs=None) -> dict[str, int]:
        prefix = tmp_path / f"nginx-{len(started)}"
        ports = {listen: free_port() for listen in listens}
        main = install(prefix, site, upstream, ports, certs)
        proc = Process(nginx_args(prefix, main), os.environ.copy(), prefix / "output.log")
        started.append(proc)

        def up() -> bool:
            if proc.proc.poll() is not None:
                error_log = prefix / "error.log"
                log = error_log.read_text() if error_log.exists() else ""
                pytest.fail(f"nginx exited:\n{proc.output()}\n{log}")
            return all(accepts_connections(port) for port in ports.values())

        wait_for(up, message="nginx to listen")
        return ports

    yield start
    for proc in started:
        proc.stop()


def upstream_of(server_url: str) -> str:
    return server_url.removeprefix("http://")


@pytest.fixture
def nginx(live_server, start_nginx) -> str:
    """Base URL of deploy/nginx.conf in front of a live gunicorn."""
    ports = start_nginx("nginx.conf", upstream_of(live_server))
    return f"http://127.0.0.1:{ports['80']}"


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers (lower-case names) of a raw HTTP response head."""
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


def raw_request(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes on a fresh connection; read the whole answer (nginx closes after errors)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return *parse_head(head), body


def assert_envelope(content_type: str, body: bytes | str, code: str) -> None:
    assert content_type.split(";")[0] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert error["message"] and set(error) == {"code", "message"}


def open_websocket(port: int) -> tuple[socket.socket, int, dict[str, str], bytes]:
    """Start a Socket.IO WebSocket upgrade: (open socket, status, headers, body of a refusal)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{port}\r\n".encode()
        + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(4096)
    return sock, status, headers, body


def test_ingest_through_nginx_is_accepted_and_readable(nginx, make_user):
    user = make_user()
    login = requests.post(
        f"{nginx}/api/v1/auth/login", json={"email": user.email, "password": "correct-horse"}
    )
    assert login.status_code == 200, login.text
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    created = requests.post(
        f"{nginx}/api/v1/events",
        json={"type": "ORDER_CREATED", "payload": {"items": [{"price": 2, "qty": 3}]}},
        headers=headers,
    )
    assert created.status_code == 202, created.text
    assert created.json()["status"] == "queued"
    event = requests.get(f"{nginx}/api/v1/events/{created.json()['eventId']}", headers=headers)
    assert event.status_code == 200 and event.json()["type"] == "ORDER_CREATED"


def test_server_header_names_nginx_without_a_version(nginx):
    health = requests.get(f"{nginx}/health")
    assert health.status_code == 200
    assert health.headers["Server"] == "nginx"
    # nginx's own pages too: an unpublished path gets nginx's 404 page, without a version.
    missing = requests.get(f"{nginx}/metrics")
    assert missing.status_code == 404
    assert missing.headers["Server"] == "nginx"
    assert "nginx/" not in missing.text


def test_a_6_kib_query_string_gets_a_json_414(nginx):
    response = requests.get(f"{nginx}/api/v1/events", params={"type": "x" * 6 * 1024})
    assert response.status_code == 414
    assert_envelope(response.headers["Content-Type"], response.content, "uri_too_long")


@pytest.mark.parametrize(
    "headers",
    [
        {f"X-Filler-{i}": "a" * 1024 for i in range(20)},
        {"Cookie": "session=" + "a" * 20 * 1024},
    ],
    ids=["twenty-1-kib-headers", "one-20-kib-cookie"],
)
def test_20_kib_of_headers_get_a_json_431(nginx, headers):
    response = requests.get(f"{nginx}/api/v1/events", headers=headers)
    assert response.status_code == 431
    assert_envelope(
        response.headers["Content-Type"], response.content, "request_header_fields_too_large"
    )


@pytest.mark.parametrize(
    "request_line",
    [b"GET /api/v1/events HTTP/1.1 extra", b"GET api/v1/events HTTP/1.1", b"\x16\x03\x01 hello"],
    ids=["extra-word", "no-leading-slash", "binary"],
)
def test_a_malformed_request_line_gets_a_json_400(nginx, request_line):
    port = int(nginx.rsplit(":", 1)[1])
    status, headers, body = raw_request(port, request_line + b"\r\nHost: x\r\n\r\n")
    assert status == 400
    assert headers["server"] == "nginx"
    assert_envelope(headers["content-type"], body, "bad_request")


def test_websockets_past_the_per_address_limit_get_429_while_the_api_answers(
    start_server, app, start_nginx
):
    # Unauthenticated sockets must stay open for the whole test, whatever the machine's speed.
    server = start_server(EVENTFLOW_SOCKET_AUTH_TIMEOUT_SECONDS="600")
    port = start_nginx("nginx.conf", upstream_of(server))["80"]
    held = []
    try:
        for _ in range(WEBSOCKETS_PER_ADDRESS):
            sock, status, _, _ = open_websocket(port)
            held.append(sock)
            assert status == 101
        for _ in range(2):
            sock, status, headers, body = open_websocket(port)
            sock.close()
            assert status == 429
            assert_envelope(headers["content-type"], body, "rate_limited")
            assert int(headers["retry-after"]) > 0
        # The limit is on /socket.io/ only: the same address still reaches the API.
        health = requests.get(f"http://127.0.0.1:{port}/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        # Closing one frees its place.
        held.pop().close()

        def reopened() -> bool:
            sock, status, _, _ = open_websocket(port)
            held.append(sock)
            return status == 101

        wait_for(reopened, message="a WebSocket slot to be free again")
    finally:
        for sock in held:
            sock.close()


def test_a_stopped_web_service_gets_a_json_502(start_nginx):
    # Nothing listens on this port: the upstream is down.
    port = start_nginx("nginx.conf", f"127.0.0.1:{free_port()}")["80"]
    for path in ("/api/v1/events", "/health"):
        response = requests.get(f"http://127.0.0.1:{port}{path}")
        assert response.status_code == 502, path
        assert_envelope(response.headers["Content-Type"], response.content, "bad_gateway")


def test_bodies_over_the_proxy_limit_get_nginx_json_413(nginx):
    response = requests.post(
        f"{nginx}/api/v1/events",
        data=b"{" + b" " * (3 * 1024 * 1024) + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert_envelope(response.headers["Content-Type"], response.content, "payload_too_large")


@pytest.fixture
def certificate(tmp_path) -> Path:
    """A self-signed certificate for 127.0.0.1 in the file names nginx-tls.conf expects."""
    certs = tmp_path / "certs"
    certs.mkdir()
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(certs / "privkey.pem"), "-out", str(certs / "fullchain.pem"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return certs


def test_the_app_believes_the_scheme_nginx_saw_not_the_one_a_client_claims(
    start_server, app, start_nginx, certificate
):
    # As in compose: web trusts one proxy hop. HSTS is the app's, sent only over https.
    server = start_server(EVENTFLOW_PROXY_HOPS="1")
    plain = start_nginx("nginx.conf", upstream_of(server))["80"]
    tls = start_nginx("nginx-tls.conf", upstream_of(server), ("80", "443"), certificate)["443"]
    forged = requests.get(
        f"http://127.0.0.1:{plain}/health",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"},
    )
    assert forged.status_code == 200
    assert "Strict-Transport-Security" not in forged.headers
    secure = requests.get(f"https://127.0.0.1:{tls}/health", verify=certificate / "fullchain.pem")
    assert secure.status_code == 200
    assert "max-age=" in secure.headers["Strict-Transport-Security"]


def test_tls_example_passes_nginx_t(tmp_path, certificate):
    prefix = tmp_path / "nginx-tls"
    ports = {"80": free_port(), "443": free_port()}
    main = install(prefix, "nginx-tls.conf", "127.0.0.1:9", ports, certificate)
    checked = subprocess.run(nginx_args(prefix, main, "-t"), capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


def test_tls_example_redirects_http_and_serves_the_same_locations_over_https(
    live_server, start_nginx, certificate
):
    ports = start_nginx(
        "nginx-tls.conf", upstream_of(live_server), listens=("80", "443"), certs=certificate
    )
    https = f"https://127.0.0.1:{ports['443']}"
    plain = requests.get(
        f"http://127.0.0.1:{ports['80']}/api/v1/events?page=2", allow_redirects=False
    )
    assert plain.status_code == 301
    assert plain.headers["Location"].startswith("https://127.0.0.1")
    assert plain.headers["Location"].endswith("/api/v1/events?page=2")
    # Plain HTTP sent to the TLS port is redirected too, not answered with an HTML 400.
    wrong_port = requests.get(f"http://127.0.0.1:{ports['443']}/health", allow_redirects=False)
    assert wrong_port.status_code == 301
    assert wrong_port.headers["Location"].startswith("https://127.0.0.1")
    health = requests.get(f"{https}/health", verify=certificate / "fullchain.pem")
    assert health.status_code == 200 and health.headers["Server"] == "nginx"
    too_long = requests.get(
        f"{https}/api/v1/events",
        params={"type": "x" * 6 * 1024},
        verify=certificate / "fullchain.pem",
    )
    assert too_long.status_code == 414
    assert_envelope(too_long.headers["Content-Type"], too_long.content, "uri_too_long")
