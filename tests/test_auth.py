"""POST /auth/register and /auth/login, and the JWT failures every protected route shares."""

import time
from datetime import timedelta

import jwt as pyjwt
from flask_jwt_extended import create_access_token

from eventflow.models import User


def test_register_returns_201_with_id_email_and_user_role(client):
    response = client.post(
        "/api/v1/auth/register", json={"email": "Ada@Example.com", "password": "longenough"}
    )
    assert response.status_code == 201
    body = response.get_json()
    assert body["email"] == "ada@example.com"
    assert body["role"] == "user"
    assert len(body["id"]) == 36


def test_register_ignores_a_requested_admin_role(client, app):
    response = client.post(
        "/api/v1/auth/register",
        json={"email": "eve@example.com", "password": "longenough", "role": "admin"},
    )
    assert response.status_code == 201
    assert response.get_json()["role"] == "user"


def test_register_rejects_bad_email_and_short_password_and_writes_nothing(client, app):
    cases = [
        ({"email": "not-an-email", "password": "longenough"}, "invalid_email"),
        ({"email": "a@example.com", "password": "short"}, "invalid_password"),
        ({"email": "a@example.com"}, "invalid_password"),
        ({"password": "longenough"}, "invalid_email"),
        ({"email": 5, "password": "longenough"}, "invalid_email"),
        ({"email": "a\u0000b@example.com", "password": "longenough"}, "invalid_email"),
    ]
    for body, code in cases:
        response = client.post("/api/v1/auth/register", json=body)
        assert response.status_code == 400, body
        assert response.get_json()["error"]["code"] == code
    for raw in ["[]", "null", "{", ""]:
        response = client.post("/api/v1/auth/register", data=raw, content_type="application/json")
        assert response.status_code == 400
        assert "error" in response.get_json()
    with app.app_context():
        assert User.query.count() == 0


def test_register_with_taken_email_in_any_case_returns_409(client):
    client.post("/api/v1/auth/register", json={"email": "bob@example.com", "password": "12345678"})
    response = client.post(
        "/api/v1/auth/register", json={"email": "BOB@example.com", "password": "12345678"}
    )
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "email_taken"


def test_login_returns_bearer_token_that_expires(client, make_user):
    user = make_user(email="carol@example.com")
    response = client.post(
        "/api/v1/auth/login", json={"email": "Carol@Example.com", "password": "correct-horse"}
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    claims = pyjwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == str(user.id)
    assert claims["exp"] - claims["iat"] == 900
    assert pyjwt.get_unverified_header(body["access_token"])["alg"] == "HS256"


def test_login_failure_message_is_the_same_for_unknown_email_and_wrong_password(client, make_user):
    make_user(email="dan@example.com")
    wrong = client.post(
        "/api/v1/auth/login", json={"email": "dan@example.com", "password": "wrong-pass"}
    )
    unknown = client.post(
        "/api/v1/auth/login", json={"email": "nobody@example.com", "password": "wrong-pass"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.get_json() == unknown.get_json()


def _token_with(app, **overrides) -> str:
    claims = {"sub": "00000000-0000-0000-0000-000000000000", "role": "user", "type": "access"}
    claims.update(overrides)
    return pyjwt.encode(claims, app.config["JWT_SECRET_KEY"], algorithm="HS256")


def test_every_jwt_failure_is_401_in_the_envelope(client, app, make_user):
    user = make_user()
    with app.app_context():
        expired = create_access_token(identity=str(user.id), expires_delta=timedelta(seconds=-10))
    none_alg = pyjwt.encode({"sub": str(user.id), "type": "access"}, None, algorithm="none")
    forged = pyjwt.encode(
        {"sub": str(user.id), "type": "access", "exp": int(time.time()) + 60},
        "another-secret-key-that-is-long-enough",
        algorithm="HS256",
    )
    cases = {
        "missing": {},
        "malformed": {"Authorization": "Bearer not.a.jwt"},
        "not bearer": {"Authorization": "Basic abc"},
        "expired": {"Authorization": f"Bearer {expired}"},
        "alg none": {"Authorization": f"Bearer {none_alg}"},
        "bad signature": {"Authorization": f"Bearer {forged}"},
    }
    for name, headers in cases.items():
        response = client.get("/api/v1/events", headers=headers)
        assert response.status_code == 401, name
        error = response.get_json()["error"]
        assert error["code"] and error["message"], name
    assert (
        client.get("/api/v1/events", headers={"Authorization": f"Bearer {expired}"}).get_json()[
            "error"
        ]["code"]
        == "token_expired"
    )


def test_cli_creates_admin_with_password_option(runner, app):
    result = runner.invoke(
        args=["users", "create", "Root@Example.com", "--admin", "--password", "s3cret-pass"]
    )
    assert result.exit_code == 0, result.output
    with app.app_context():
        user = User.query.filter_by(email="root@example.com").one()
        assert user.role == "admin"


def test_cli_prompts_for_password_when_not_given(runner, app):
    result = runner.invoke(
        args=["users", "create", "pat@example.com"], input="longpassword\nlongpassword\n"
    )
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert User.query.filter_by(email="pat@example.com").one().role == "user"


def test_cli_refuses_taken_email_and_short_password(runner, make_user):
    make_user(email="taken@example.com")
    taken = runner.invoke(args=["users", "create", "taken@example.com", "--password", "12345678"])
    assert taken.exit_code != 0 and "already exists" in taken.output
    short = runner.invoke(args=["users", "create", "new@example.com", "--password", "123"])
    assert short.exit_code != 0 and "at least 8" in short.output


def test_ensure_admin_creates_once_and_prints_password_only_the_first_time(runner):
    first = runner.invoke(args=["users", "ensure-admin"])
    assert first.exit_code == 0 and "password:" in first.output
    second = runner.invoke(args=["users", "ensure-admin"])
    assert second.exit_code == 0 and "password" not in second.output


def test_a_token_accepted_before_is_refused_once_it_expires(client, app, make_user):
    user = make_user()
    with app.app_context():
        token = create_access_token(
            identity=str(user.id),
            additional_claims={"role": "user", "sid": "s1", "gen": 0},
            expires_delta=timedelta(seconds=1),
        )
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/events", headers=headers).status_code == 200
    time.sleep(1.2)
    response = client.get("/api/v1/events", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "token_expired"


def test_a_refresh_token_is_not_accepted_as_an_access_token(client, app, make_user):
    from flask_jwt_extended import create_refresh_token

    user = make_user()
    with app.app_context():
        token = create_refresh_token(identity=str(user.id))
    response = client.get("/api/v1/events", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert "error" in response.get_json()
