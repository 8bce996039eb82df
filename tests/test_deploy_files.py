"""The deployment files name real entry points: docker-compose.yml, Dockerfile, deploy/*.conf.

No Docker engine runs here, so the files are checked against the app itself: every command a
container runs is a real command of this checkout, every variable compose gives the app is one
it reads, the containers' exact environment passes the app's production start-up checks, the
image's own environment without secrets does not, and compose's Redis command line, run by the
real redis-server, lets in only clients that know the password. tests/test_nginx.py runs nginx.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis as redis_lib
import yaml

from eventflow.config import ENVIRONMENT_VARIABLES, load_settings
from tests.processes import Process, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = ("migrate", "web", "worker")
# What an operator puts in .env; compose must refuse to start without any of them.
DOT_ENV = {
    "SECRET_KEY": "s" * 64,
    "JWT_SECRET_KEY": "j" * 64,
    "POSTGRES_PASSWORD": "0123456789abcdef",
    "REDIS_PASSWORD": "fedcba9876543210",
}
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$")


class MissingVariable(Exception):
    pass


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error} and $$."""

    def replace(match: re.Match) -> str:
        text = match.group(0)
        if text == "$$":
            return "$"
        if text == "$":
            raise AssertionError(f"bare $ in {value!r}: compose needs $$ or ${{NAME}}")
        name, operator, argument = match.groups()
        current = env.get(name)
        unset = current is None or ((operator or "").startswith(":") and not current)
        if operator and operator.endswith("?") and unset:
            raise MissingVariable(f"{name}: {argument}")
        if operator and operator.endswith("-") and unset:
            return argument
        return current or ""

    return _VARIABLE.sub(replace, value)


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in dockerfile():
        if keyword == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(arguments))
    return env


def dockerfile_cmd() -> list[str]:
    (cmd,) = [yaml.safe_load(args) for keyword, args in dockerfile() if keyword == "CMD"]
    assert isinstance(cmd, list), "CMD must be in exec form so gunicorn gets SIGTERM itself"
    return cmd


def service_environment(name: str) -> dict[str, str]:
    environment = SERVICES[name].get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def container_environment(name: str, dot_env: Mapping[str, str] = DOT_ENV) -> dict[str, str]:
    """The environment the service's process sees: the image's ENV, then compose's."""
    resolved = {
        key: interpolate(value, dot_env) for key, value in service_environment(name).items()
    }
    return {**dockerfile_env(), **resolved}


def command(name: str) -> list[str]:
    value = SERVICES[name].get("command")
    if value is None:
        return dockerfile_cmd()
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def strings_in(node) -> Iterator[str]:
    """Every string in a piece of the compose file: commands, environments, healthchecks."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from strings_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings_in(value)


def nginx_conf(name: str) -> str:
    """deploy/<name> with every `include` replaced by the file it names (all in deploy/)."""
    text = (ROOT / "deploy" / name).read_text()
    return re.sub(
        r"^\s*include\s+([\w.-]+);",
        lambda match: (ROOT / "deploy" / match.group(1)).read_text(),
        text,
        flags=re.M,
    )


def nginx_includes(name: str) -> list[str]:
    return re.findall(r"^\s*include\s+(\S+);", (ROOT / "deploy" / name).read_text(), re.M)


def run_as_container(name: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run args from this checkout with only the service's container environment."""
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    env.update(container_environment(name), EVENTFLOW_INSTANCE_PATH=str(tmp_path))
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def variables_read_by(path: Path) -> set[str]:
    """Names a Python file reads with os.environ.get("X"), os.environ["X"] or os.getenv("X")."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            target = ast.unparse(node.func)
            if target in ("os.environ.get", "os.getenv"):
                names.add(node.args[0].value)
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            if isinstance(node.slice, ast.Constant):
                names.add(node.slice.value)
    return names


def seconds(duration: str) -> float:
    """A compose duration such as 2m, 30s or 1m30s, in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", str(duration))
    assert parts and "".join(n + u for n, u in parts) == str(duration), duration
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[u] for n, u in parts)


def flask_commands() -> Iterator[tuple[str, list[str]]]:
    for name in SERVICES:
        if name in APP_SERVICES and command(name)[0] == "flask":
            yield name, command(name)


class RecordingEnv(Mapping):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: dict[str, str]):
        self.values = values
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self.values[key]

    def __iter__(self):
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def test_compose_defines_the_database_queue_migration_web_worker_and_load_balancer():
    assert {"postgres", "redis", "migrate", "web", "worker", "nginx"} <= set(SERVICES)


def test_postgres_keeps_its_data_in_a_named_volume_and_has_a_pg_isready_healthcheck():
    postgres = SERVICES["postgres"]
    mounts = dict(volume.split(":", 1) for volume in postgres["volumes"])
    assert mounts.get("postgres-data") == "/var/lib/postgresql/data"
    assert "postgres-data" in COMPOSE["volumes"]
    assert "pg_isready" in postgres["healthcheck"]["test"]


def test_redis_runs_with_append_only_persistence_on_a_volume():
    redis = SERVICES["redis"]
    argv = command("redis")
    assert argv[0] == "redis-server"
    assert argv[argv.index("--appendonly") + 1] == "yes"
    mounts = dict(volume.split(":", 1) for volume in redis["volumes"])
    assert mounts.get("redis-data") == "/data"
    assert "redis-data" in COMPOSE["volumes"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_redis_url_carries_the_redis_password(name):
    url = urlsplit(container_environment(name)["REDIS_URL"])
    assert (url.hostname, url.port) == ("redis", 6379)
    assert url.password == DOT_ENV["REDIS_PASSWORD"]


@pytest.fixture
def compose_redis(tmp_path):
    """compose's redis-server command line, run for real on a free local port."""
    port = free_port()
    argv = [interpolate(arg, DOT_ENV) for arg in command("redis")]
    local = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""]
    proc = Process([*argv, *local], os.environ.copy(), tmp_path / "redis.log")

    def answers() -> bool:
        if proc.proc.poll() is not None:
            pytest.fail(f"redis-server exited:\n{proc.output()}")
        try:
            with redis_lib.Redis(port=port) as client:
                client.ping()
        except redis_lib.AuthenticationError:  # a ConnectionError too: catch it first
            return True
        except redis_lib.ConnectionError:
            return False
        pytest.fail("redis-server answered a client without the password")

    wait_for(answers, message="redis-server to start")
    yield port
    proc.stop()


@pytest.mark.parametrize("name", APP_SERVICES)
def test_redis_lets_in_only_clients_with_the_password_every_app_service_has(name, compose_redis):
    with redis_lib.Redis(port=compose_redis) as anonymous:
        with pytest.raises(redis_lib.AuthenticationError):
            anonymous.ping()
    url = container_environment(name)["REDIS_URL"].replace(
        "@redis:6379", f"@127.0.0.1:{compose_redis}"
    )
    with redis_lib.Redis.from_url(url) as client:
        assert client.ping() is True


def test_redis_healthcheck_authenticates_and_fails_without_the_password(compose_redis):
    kind, script = SERVICES["redis"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    # The container's redis-cli talks to its own server on the default port: point it at ours.
    script = script.replace("redis-cli", f"redis-cli -p {compose_redis}")
    environment = {
        key: interpolate(value, DOT_ENV)
        for key, value in (SERVICES["redis"].get("environment") or {}).items()
    }
    path = {"PATH": os.environ["PATH"]}
    healthy = subprocess.run(["sh", "-c", script], env={**path, **environment}, timeout=60)
    assert healthy.returncode == 0
    unhealthy = subprocess.run(["sh", "-c", script], env=path, capture_output=True, timeout=60)
    assert unhealthy.returncode != 0


def test_migrate_runs_db_upgrade_once_after_postgres_is_healthy():
    migrate = SERVICES["migrate"]
    assert command("migrate") == ["flask", "--app", "wsgi", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["web", "worker"])
def test_web_and_worker_start_after_migration_succeeded_and_services_are_healthy(name):
    depends_on = SERVICES[name]["depends_on"]
    assert depends_on["migrate"]["condition"] == "service_completed_successfully"
    assert depends_on["postgres"]["condition"] == "service_healthy"
    assert depends_on["redis"]["condition"] == "service_healthy"


def test_worker_runs_the_worker_command_and_can_be_scaled():
    worker = SERVICES["worker"]
    assert command("worker")[:4] == ["flask", "--app", "wsgi", "worker"]
    assert "container_name" not in worker and "ports" not in worker
    # SIGTERM finishes in-flight events: give them time before compose sends SIGKILL.
    assert seconds(worker["stop_grace_period"]) >= 60


def test_web_is_gunicorn_with_the_repo_config_and_only_nginx_is_published():
    assert command("web") == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    assert dockerfile_cmd() == command("web")
    assert (ROOT / "gunicorn.conf.py").is_file() and (ROOT / "wsgi.py").is_file()
    assert "ports" not in SERVICES["web"]
    assert SERVICES["nginx"]["ports"]


def test_web_healthcheck_asks_health_with_python_not_curl():
    test = SERVICES["web"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert "urllib.request" in test[3] and "/health" in test[3]


def test_gunicorn_loads_wsgi_app_with_the_web_containers_environment(tmp_path):
    result = run_as_container("web", ["gunicorn", "--print-config", *command("web")[1:]], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    settings = dict(
        (line.split("=", 1)[0].strip(), line.split("=", 1)[1].strip())
        for line in result.stdout.splitlines()
        if "=" in line
    )
    assert settings["bind"] == "['0.0.0.0:5000']"
    assert settings["config"] == "gunicorn.conf.py"


def test_migrate_and_worker_are_the_services_running_flask_commands():
    assert {name for name, _ in flask_commands()} == {"migrate", "worker"}


@pytest.mark.parametrize("name,argv", list(flask_commands()))
def test_every_flask_command_in_compose_is_a_real_command_of_the_app(name, argv, tmp_path):
    # --help resolves every subcommand and option first: a wrong name fails with exit 2.
    result = run_as_container(name, [*argv, "--help"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Usage:")


def test_environment_variables_lists_every_name_load_settings_reads():
    env = RecordingEnv({name: "" for name in ENVIRONMENT_VARIABLES})
    load_settings(env)
    production = RecordingEnv(
        {"EVENTFLOW_ENV": "production", "SECRET_KEY": "s" * 40, "JWT_SECRET_KEY": "j" * 40}
    )
    load_settings(production)
    assert env.read | production.read == set(ENVIRONMENT_VARIABLES)


def test_web_trusts_exactly_one_proxy_hop_nginx():
    assert service_environment("web")["EVENTFLOW_PROXY_HOPS"] == "1"
    assert load_settings(container_environment("web")).proxy_hops == 1
    # ...and nginx overwrites what the app then trusts: the scheme, and its own last hop.
    for site in ("nginx.conf", "nginx-tls.conf"):
        conf = nginx_conf(site)
        assert "proxy_set_header X-Forwarded-Proto $scheme;" in conf
        assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in conf
        assert "proxy_set_header X-Forwarded-Host $http_host;" in conf


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_gives_the_app_only_variables_it_reads(name):
    read = set(ENVIRONMENT_VARIABLES) | variables_read_by(ROOT / "gunicorn.conf.py")
    unknown = set(service_environment(name)) - read
    assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"


def test_dockerfile_env_names_are_read_by_the_app_or_gunicorn():
    read = set(ENVIRONMENT_VARIABLES) | variables_read_by(ROOT / "gunicorn.conf.py")
    ours = {name for name in dockerfile_env() if not name.startswith(("PYTHON", "PIP_"))}
    assert ours and ours <= read
    assert dockerfile_env()["GUNICORN_BIND"] == "0.0.0.0:5000"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_containers_run_in_production_and_pass_its_start_up_checks(name):
    env = container_environment(name)
    assert env["EVENTFLOW_ENV"] == "production"
    settings = load_settings(env)
    assert settings.database_url.startswith("postgresql://") and settings.redis_url


@pytest.mark.parametrize("secret", list(DOT_ENV))
def test_compose_refuses_to_start_without_each_secret(secret):
    dot_env = {**DOT_ENV, secret: ""}
    with pytest.raises(MissingVariable, match=secret):
        for value in strings_in(SERVICES):
            interpolate(value, dot_env)


def test_env_example_lists_every_secret_compose_requires():
    names = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert set(DOT_ENV) <= names


def test_the_image_defaults_to_production():
    assert dockerfile_env()["EVENTFLOW_ENV"] == "production"


@pytest.mark.parametrize("name", APP_SERVICES)
@pytest.mark.parametrize(
    "given",
    [
        {},
        {"DATABASE_URL": "postgresql://eventflow@postgres/eventflow", "REDIS_URL": "redis://redis"},
    ],
    ids=["docker-run-bare", "docker-run-with-urls"],
)
def test_the_image_without_secrets_refuses_to_start_naming_the_missing_one(name, given, tmp_path):
    # `docker run eventflow [command]` with no secret: only the image's ENV and what is given.
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    env.update(dockerfile_env(), **given, EVENTFLOW_INSTANCE_PATH=str(tmp_path))
    env["GUNICORN_BIND"] = f"127.0.0.1:{free_port()}"  # the image's 0.0.0.0:5000 may be taken here
    argv = command(name)
    proc = Process([str(BIN / argv[0]), *argv[1:]], env, tmp_path / "output.log")
    try:
        # A server that keeps running (or keeps restarting its workers) did not refuse.
        exited = proc.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{name} kept running without secrets:\n{proc.output()[-2000:]}")
    assert exited != 0
    assert "SECRET_KEY" in proc.output()


def test_dockerfile_installs_requirements_and_runs_as_a_non_root_user():
    instructions = dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    keywords = [keyword for keyword, _ in instructions]
    copy_requirements = instructions.index(("COPY", "requirements.txt ."))
    runs = [i for i, (keyword, args) in enumerate(instructions) if keyword == "RUN"]
    install = next(i for i in runs if "pip install -r requirements.txt" in instructions[i][1])
    assert copy_requirements < install < keywords.index("USER")
    user = dict(instructions)["USER"]
    assert user not in ("root", "0")
    assert keywords.index("USER") < keywords.index("CMD")


def test_dockerignore_keeps_the_virtualenv_instance_data_and_secrets_out_of_the_image():
    patterns = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "instance", ".env", ".git"} <= patterns


def test_nginx_site_and_every_file_it_includes_are_mounted_where_nginx_looks():
    mounts = [volume.split(":") for volume in SERVICES["nginx"]["volumes"]]
    assert ["./deploy/nginx.conf", "/etc/nginx/conf.d/default.conf", "ro"] in mounts
    # A relative include is resolved against the main file's directory, /etc/nginx.
    assert nginx_includes("nginx.conf")
    for name in nginx_includes("nginx.conf"):
        assert [f"./deploy/{name}", f"/etc/nginx/{name}", "ro"] in mounts
    # The TLS example serves the same locations from the same files.
    assert nginx_includes("nginx-tls.conf") == nginx_includes("nginx.conf")


@pytest.mark.parametrize("site", ["nginx.conf", "nginx-tls.conf"])
def test_nginx_hides_its_version_and_limits_socket_io_connections_per_address(site):
    conf = nginx_conf(site)
    assert re.search(r"^\s*server_tokens\s+off;", conf, re.M)
    zone = re.search(r"limit_conn_zone\s+\$binary_remote_addr\s+zone=(\w+):", conf)
    assert zone
    socket_io = re.search(r"location /socket\.io/ \{([^}]*)\}", conf).group(1)
    limit = re.search(rf"^\s*limit_conn\s+{zone.group(1)}\s+(\d+);", socket_io, re.M)
    assert limit and 1 <= int(limit.group(1)) <= 100
    assert "limit_conn_status 429;" in socket_io
    # Request rates are the app's to limit (per account, per user, shared through Redis).
    assert not re.search(r"^\s*limit_req", conf, re.M)


def test_nginx_balances_over_web_and_upgrades_socket_io():
    conf = nginx_conf("nginx.conf")
    upstream = re.search(r"upstream\s+(\w+)\s*\{([^}]*)\}", conf)
    assert upstream
    port = dockerfile_env()["GUNICORN_BIND"].rsplit(":", 1)[1]
    assert re.findall(r"^\s*server\s+([\w.:-]+)", upstream.group(2), re.M) == [f"web:{port}"]
    socket_io = re.search(r"location /socket\.io/ \{([^}]*)\}", conf).group(1)
    assert "proxy_set_header Upgrade $http_upgrade;" in socket_io
    assert "proxy_set_header Connection $connection_upgrade;" in socket_io
    for path in ("/api/", "/dashboard", "= /health", "/static/"):
        block = re.search(rf"location {re.escape(path)} \{{([^}}]*)\}}", conf)
        assert block and f"proxy_pass http://{upstream.group(1)};" in block.group(1), path


def test_nginx_lets_bodies_over_one_mib_reach_the_app_and_answers_larger_ones_in_json():
    conf = nginx_conf("nginx.conf")
    size = re.search(r"client_max_body_size\s+(\d+)([km]?);", conf)
    factor = {"": 1, "k": 1024, "m": 1024 * 1024}[size.group(2)]
    assert int(size.group(1)) * factor > 1024 * 1024
    page = re.search(r"error_page 413 (\S+);", conf).group(1)
    fallback = re.search(rf"location (?:= )?{re.escape(page)} \{{([^}}]*)\}}", conf).group(1)
    assert "default_type application/json;" in fallback
    assert re.search(r"return 413 '\{\"error\":\{\"code\":\"payload_too_large\"", fallback)
