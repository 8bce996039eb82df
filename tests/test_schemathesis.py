"""schemathesis against a real gunicorn on PostgreSQL + Redis, from GET /api/v1/openapi.json.

Every operation is called with generated requests, as an admin and as an ordinary user: no
answer may be a 5xx, and every answer must be documented (status, headers, content type, body
schema). A stateful run follows the document's links (register -> login -> ingest -> read).
Examples are bounded so that the module takes about a minute on two cores.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import psycopg2
import pytest
import redis as redis_lib
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import Flaky

from .conftest import flask_cli, launch_gunicorn, wait_until_serving

PASSWORD = "correct-horse-battery"
# Generated logins and registrations must reach the views, not the limits.
UNLIMITED = {
    "EVENTFLOW_RATE_LIMIT_LOGIN": "1000000/minute",
    "EVENTFLOW_RATE_LIMIT_REGISTER": "1000000/hour",
}
EXAMPLES_PER_OPERATION = 15
LINKED_SCENARIOS = 12
# The stateful run walks these operations only, so that its scenarios follow the chain often.
CHAIN = ["api.register", "api.login", "api.create_event", "api.get_event"]


@pytest.fixture(scope="module")
def api_server(migrated, base_env, tmp_path_factory):
    redis_lib.Redis.from_url(base_env["REDIS_URL"]).flushdb()
    log = tmp_path_factory.mktemp("schemathesis") / "gunicorn.log"
    proc, url = launch_gunicorn({**base_env, **UNLIMITED}, log)
    wait_until_serving(proc, url, statuses=(200,))
    yield url
    proc.stop()


def _login(url: str, email: str) -> dict:
    response = requests.post(
        f"{url}/api/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def accounts(api_server, base_env, database_url):
    """An admin, a user with events in every state, and tokens for the calls that end them."""
    suffix = uuid.uuid4().hex[:8]
    emails = {role: f"{role}-{suffix}@example.com" for role in ("admin", "user", "changer")}
    flask_cli(
        base_env, "users", "create", emails["admin"], "--admin", "--password", PASSWORD, check=True
    )
    for role in ("user", "changer"):
        flask_cli(base_env, "users", "create", emails[role], "--password", PASSWORD, check=True)
    admin, user = _login(api_server, emails["admin"]), _login(api_server, emails["user"])
    ids = []
    for n in range(3):
        response = requests.post(
            f"{api_server}/api/v1/events",
            json={"type": "ORDER_CREATED", "payload": {"n": n, "big": 10**30}},
            headers=_bearer(user["access_token"]),
            timeout=30,
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["eventId"])
    # No worker runs here: give two of the events the states a worker would.
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE events SET status = 'FAILED', attempts = 5, last_error = 'ValueError: boom'"
            " WHERE id = %s",
            (ids[0],),
        )
        cur.execute(
            "UPDATE events SET status = 'PROCESSED', attempts = 1, result = '{\"total\": 1.5}',"
            " processed_at = now() WHERE id = %s",
            (ids[1],),
        )
    conn.close()
    return SimpleNamespace(
        url=api_server,
        emails=emails,
        headers={"admin": _bearer(admin["access_token"]), "user": _bearer(user["access_token"])},
        refresh=_bearer(user["refresh_token"]),
        changer=_bearer(_login(api_server, emails["changer"])["access_token"]),
    )


def headers_for(accounts, case, role: str) -> dict[str, str]:
    """The Authorization a call of `case` goes with, so that no call ends a shared session."""
    path = case.operation.path
    if path == "/api/v1/auth/logout":  # a session of its own, which the call ends
        return _bearer(_login(accounts.url, accounts.emails[role])["access_token"])
    if path == "/api/v1/auth/refresh":
        return accounts.refresh
    if path == "/api/v1/auth/password":  # a right guess would revoke every token of the user
        return accounts.changer
    return accounts.headers[role]


@pytest.fixture(scope="module")
def api_schema(api_server):
    schema = schemathesis.openapi.from_url(f"{api_server}/api/v1/openapi.json", timeout=30)
    schema.config.update(base_url=api_server, request_timeout=30)
    # Unknown query arguments are ignored, as most APIs do (a cache-buster must not break a
    # call): negative examples do not add any.
    schema.config.generation.update(
        max_examples=EXAMPLES_PER_OPERATION, database="none", allow_extra_parameters=False
    )
    # Some rules have no JSON Schema: a cursor is one the API issued, page × limit is at most
    # 10,000, an e-mail address is one email-validator accepts, payload strings hold no U+0000.
    # Schema-valid requests may break them, and get the documented 400 that says so.
    schema.config.checks.update(excluded_check_names=["positive_data_acceptance"])
    # A URL or headers over gunicorn's limits are refused before the app, with 414 or 431.
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "414", "431"]
    return schema


@pytest.fixture(scope="module")
def linked_schema(api_server):
    """The document for the stateful run: valid requests only, so that chains get deep, and no
    generated Authorization: a call's token is one a linked login gave, or the admin's."""
    schema = schemathesis.openapi.from_url(f"{api_server}/api/v1/openapi.json", timeout=30)
    schema.config.update(base_url=api_server, request_timeout=30)
    schema.config.generation.update(
        modes=["positive"], with_security_parameters=False, database="none"
    )
    schema.config.checks.update(excluded_check_names=["positive_data_acceptance"])
    return schema.include(operation_id=CHAIN)


def test_linked_calls_register_login_ingest_and_read_as_documented(linked_schema, accounts):
    calls: list[tuple[str, int]] = []
    links: set[str] = set()  # the links the scenarios followed
    failures: list[Exception] = []  # what the checks found, kept in case Hypothesis loses it

    class Machine(linked_schema.as_state_machine()):
        def step(self, input):
            if input.transition is not None:
                links.add(input.transition.id.rsplit(" -> ", 1)[0])
            return super().step(input)

        def get_call_kwargs(self, case):
            # A token from a linked login stays (passed explicitly, so that schemathesis knows
            # it for a real one); every other call goes as the admin.
            linked = (case.headers or {}).get("Authorization")
            if linked:
                return {"headers": {"Authorization": linked}}
            return {"headers": headers_for(accounts, case, "admin")}

        def after_call(self, response, case):
            calls.append((case.operation.label, response.status_code))

        def validate_response(self, response, case, **kwargs):
            try:
                super().validate_response(response, case, **kwargs)
            except Exception as exc:
                failures.append(exc)
                raise

    try:
        Machine.run(
            settings=settings(
                max_examples=LINKED_SCENARIOS,
                stateful_step_count=6,
                deadline=None,
                database=None,
                # The server's state moves on, so a scenario cannot be replayed: none is shrunk.
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
        )
    except Flaky:
        # Hypothesis noticed that a scenario's rules differ from an earlier run of the same
        # choices (a login that succeeded once is refused now). schemathesis' own runner treats
        # this as no finding; a check that failed is still reported below.
        pass
    assert failures == []
    assert links >= {
        "POST /api/v1/auth/register -> [201] LogIn",
        "POST /api/v1/auth/login -> [200] CreateEvent",
        "POST /api/v1/events -> [202] GetEvent",
    }
    # Reached through the links only: no generated password or id matches a real one.
    assert ("POST /api/v1/auth/login", 200) in calls
    assert ("GET /api/v1/events/{event_id}", 200) in calls


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    # schemathesis 4.32 relabels the test per operation through Node._nodeid, which pytest 9
    # no longer has (pytest keeps its own id elsewhere, so reporting is unaffected).
    request.node._nodeid = request.node.nodeid


@schema.parametrize()
@settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_answers_as_documented_for_an_admin_and_a_user(case, accounts):
    for role in ("admin", "user"):
        case.call_and_validate(headers=headers_for(accounts, case, role))
