"""Two apps in one process share no state: handlers, processing, JWT loaders, Socket.IO, backend.

Tests, the CLI and benchmarks build several apps in one process; what one app registers or
learns must not reach another.
"""

from __future__ import annotations

from eventflow import create_app
from eventflow.backend import backend_of
from eventflow.tasks.queue import processor_of
from eventflow.tasks.registry import load_handlers


def _two_apps(base_env: dict[str, str]):
    with_test_handlers = create_app({**base_env, "TESTING": True})
    builtin_only = create_app({**base_env, "EVENTFLOW_HANDLERS": "", "TESTING": True})
    return with_test_handlers, builtin_only


def test_each_app_registers_only_the_handlers_it_loads(base_env):
    first, second = _two_apps(base_env)
    # tests.handlers is imported by now, yet only the app that names it registers its handlers.
    first_types = processor_of(first).handlers.event_types()
    second_types = processor_of(second).handlers.event_types()
    assert {"TEST_OK", "TEST_FLAKY", "ORDER_CREATED", "PAGE_VIEW"} <= set(first_types)
    assert not [t for t in second_types if t.startswith("TEST_")]
    assert {"ORDER_CREATED", "PAGE_VIEW", "USER_SIGNUP", "ANALYTICS", "CLICK"} <= set(second_types)


def test_loading_handlers_twice_gives_two_registries_with_the_same_functions():
    one, two = load_handlers(["tests.handlers"]), load_handlers(["tests.handlers"])
    assert one is not two and one.event_types() == two.event_types()
    assert one.get("TEST_OK") is two.get("TEST_OK") is not None


def test_each_app_has_its_own_processor_in_flight_events_and_batch_sizer(base_env):
    first, second = _two_apps(base_env)
    a, b = processor_of(first), processor_of(second)
    assert a is not b and a.in_flight is not b.in_flight and a.sizer is not b.sizer
    for _ in range(3):
        a.sizer.observe(0.0, 100)  # the first app learns its handlers are fast
    assert a.sizer.size() > 1 and b.sizer.size() == 1
    assert backend_of(first) is not backend_of(second)
    assert backend_of(first).broker.shared is not backend_of(second).broker.shared


def test_a_second_app_leaves_the_first_apps_jwt_loaders_and_socketio_server_alone(base_env):
    first = create_app({**base_env, "TESTING": True})
    first_jwt = first.extensions["flask-jwt-extended"]
    loaders = dict(vars(first_jwt))
    first_server = first.extensions["socketio"].server
    second = create_app({**base_env, "TESTING": True})
    second_jwt = second.extensions["flask-jwt-extended"]
    # One manager per app, its loaders registered once, by its own create_app.
    assert second_jwt is not first_jwt
    assert vars(first_jwt) == loaders
    assert second.extensions["socketio"].server is not first_server
    assert first.extensions["socketio"].server is first_server
    assert second.extensions["csrf"] is not first.extensions["csrf"]
    for app in (first, second):
        response = app.test_client().get("/api/v1/events")
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "missing_token"
