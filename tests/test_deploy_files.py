"""The deployment files name real entry points: docker-compose.yml, Dockerfile, deploy/nginx.conf.

No Docker engine runs here, so the files are checked against the app itself: every command a
container runs is a real command of this checkout, every variable compose gives the app is one
it reads, and the containers' exact environment passes the app's production start-up checks.
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

import pytest
import yaml

from eventflow.config import ENVIRONMENT_VARIABLES, load_settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = ("migrate", "web", "worker")
# What an operator puts in .env; compose must refuse to start without the first three.
DOT_ENV = {
    "SECRET_KEY": "s" * 64,
    "JWT_SECRET_KEY": "j" * 64,
    "POSTGRES_PASSWORD": "0123456789abcdef",
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


def test_redis_runs_with_append_only_persistence_on_a_volume_and_a_ping_healthcheck():
    redis = SERVICES["redis"]
    argv = command("redis")
    assert argv[0] == "redis-server"
    assert argv[argv.index("--appendonly") + 1] == "yes"
    mounts = dict(volume.split(":", 1) for volume in redis["volumes"])
    assert mounts.get("redis-data") == "/data"
    assert "redis-data" in COMPOSE["volumes"]
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


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


@pytest.mark.parametrize("secret", ["SECRET_KEY", "JWT_SECRET_KEY", "POSTGRES_PASSWORD"])
def test_compose_refuses_to_start_without_each_secret(secret):
    dot_env = {**DOT_ENV, secret: ""}
    values = [value for name in SERVICES for value in service_environment(name).values()]
    with pytest.raises(MissingVariable, match=secret):
        for value in values:
            interpolate(value, dot_env)


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


def test_nginx_balances_over_web_stickily_and_upgrades_socket_io():
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    mounts = [volume.split(":") for volume in SERVICES["nginx"]["volumes"]]
    assert ["./deploy/nginx.conf", "/etc/nginx/conf.d/default.conf", "ro"] in mounts
    upstream = re.search(r"upstream\s+(\w+)\s*\{([^}]*)\}", conf)
    assert upstream and re.search(r"^\s*ip_hash;", upstream.group(2), re.M)
    port = dockerfile_env()["GUNICORN_BIND"].rsplit(":", 1)[1]
    assert re.findall(r"^\s*server\s+([\w.:-]+)", upstream.group(2), re.M) == [f"web:{port}"]
    socket_io = re.search(r"location /socket\.io/ \{([^}]*)\}", conf).group(1)
    assert "proxy_set_header Upgrade $http_upgrade;" in socket_io
    assert "proxy_set_header Connection $connection_upgrade;" in socket_io
    for path in ("/api/", "/dashboard", "= /health", "/static/"):
        block = re.search(rf"location {re.escape(path)} \{{([^}}]*)\}}", conf)
        assert block and f"proxy_pass http://{upstream.group(1)};" in block.group(1), path


def test_nginx_lets_bodies_over_one_mib_reach_the_app_and_answers_larger_ones_in_json():
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    size = re.search(r"client_max_body_size\s+(\d+)([km]?);", conf)
    factor = {"": 1, "k": 1024, "m": 1024 * 1024}[size.group(2)]
    assert int(size.group(1)) * factor > 1024 * 1024
    named = re.search(r"error_page 413 (@\w+);", conf).group(1)
    fallback = re.search(rf"location {named} \{{([^}}]*)\}}", conf).group(1)
    assert "default_type application/json;" in fallback
    assert re.search(r"return 413 '\{\"error\":\{\"code\":\"payload_too_large\"", fallback)
