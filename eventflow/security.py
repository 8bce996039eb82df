"""Rate limits, security headers and trusted proxies (CONTRACT section 9), set up by init_security.

Limits are Flask-Limiter's, kept in Redis so every gunicorn process and host shares them (in
memory in the embedded default). A view opts in with one of the decorators at the end of this
module; other routes pay only for the headers hook.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar, overload

from flask import Flask, Response, current_app, g, request
from flask.typing import ResponseReturnValue
from flask_limiter import RateLimitExceeded
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from .config import Settings
from .errors import ApiError
from .extensions import limiter

logger = logging.getLogger(__name__)
View = Callable[..., ResponseReturnValue]
H = TypeVar("H")

KEY_PREFIX = "eventflow"
# The dashboard's templates carry no inline script or style; htmx and the charts are vendored.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)
# Not includeSubDomains: the operator's other hosts under the same domain are not ours to pin.
STRICT_TRANSPORT_SECURITY = "max-age=31536000"
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
)
# A limiter that waits on a hung Redis would hold every limited request; fail fast instead and
# fall back to per-process memory (Flask-Limiter's in-memory fallback) until Redis answers.
REDIS_OPTIONS = {"socket_connect_timeout": 1, "socket_timeout": 1}


def init_security(app: Flask, settings: Settings) -> None:
    """Trust `proxy_hops` proxies, bind the rate limiter to its storage, add the headers."""
    if settings.proxy_hops > 0:
        hops = settings.proxy_hops
        proxied = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
        app.wsgi_app = proxied  # type: ignore[method-assign]
    # Explicit: Flask-Limiter keeps an app's RATELIMIT_ENABLED=False for every later app.
    app.config.setdefault("RATELIMIT_ENABLED", True)
    app.config.update(
        RATELIMIT_STORAGE_URI=_storage_uri(settings.redis_url),
        RATELIMIT_STORAGE_OPTIONS=REDIS_OPTIONS if settings.redis_url else {},
        RATELIMIT_STRATEGY="fixed-window",
        RATELIMIT_KEY_PREFIX=KEY_PREFIX,
        # Redis down must not turn requests into 500s: count in memory meanwhile, log the rest.
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
        RATELIMIT_SWALLOW_ERRORS=True,
        # X-RateLimit-* on every response would cost Redis round trips on the ingest path;
        # Retry-After is set on 429s by the error handlers.
        RATELIMIT_HEADERS_ENABLED=False,
    )
    limiter.init_app(app)
    if limiter.enabled:  # RATELIMIT_ENABLED=False in a test's config adds no hooks
        _unhook_app_wide_checks(app)
    app.after_request(add_security_headers)


def _unhook_app_wide_checks(app: Flask) -> None:
    """Remove Flask-Limiter's per-request hooks: every EventFlow limit is a route decorator.

    The hooks look for default and application-wide limits (we set none) on every request, at
    about 50 us a request, ingest included; a decorated view checks its own limits without them.
    Start-up fails here, rather than limits silently changing, if an upgrade moves the hooks.
    """

    app.before_request_funcs[None] = _without_limiter_hook(app.before_request_funcs[None])
    app.after_request_funcs[None] = _without_limiter_hook(app.after_request_funcs[None])
    app.teardown_request_funcs[None] = _without_limiter_hook(app.teardown_request_funcs[None])


def _without_limiter_hook(hooks: list[H]) -> list[H]:
    """The hooks but Flask-Limiter's one; RuntimeError unless there is exactly one."""

    def is_limiters(hook: object) -> bool:
        if isinstance(hook, functools.partial):  # its after_request hook is a partial
            return bool(hook.args) and hook.args[0] is limiter
        return getattr(hook, "__self__", None) is limiter

    kept = [hook for hook in hooks if not is_limiters(hook)]
    if len(kept) != len(hooks) - 1:
        raise RuntimeError("Flask-Limiter's request hooks are not where this version expects")
    return kept


def _storage_uri(redis_url: str | None) -> str:
    if redis_url is None:
        return "memory://"
    if redis_url.startswith("unix://"):  # the limits library spells a socket path redis+unix://
        return "redis+unix://" + redis_url[len("unix://") :]
    return redis_url


def add_security_headers(response: Response) -> Response:
    """CSP, no framing, nosniff and the referrer policy on every response; HSTS over HTTPS."""
    headers = response.headers
    present = {name.lower() for name in headers.keys()}  # one pass: Headers lookups are scans
    for name, value in SECURITY_HEADERS:
        if name.lower() not in present:  # a view may set a policy of its own
            headers.add(name, value)
    # is_secure is the socket's scheme, or X-Forwarded-Proto only when ProxyFix trusts it.
    if request.is_secure and "strict-transport-security" not in present:
        headers.add("Strict-Transport-Security", STRICT_TRANSPORT_SECURITY)
    return response


# --- keys ------------------------------------------------------------------------------------


def client_address() -> str:
    """The client's address: the socket peer, or X-Forwarded-For through `proxy_hops` proxies."""
    return request.remote_addr or "unknown"


def _account(raw: object) -> str:
    # authenticate() looks e-mails up by lower(strip(email)); anything longer than an e-mail can
    # be never matches an account, so one key covers them all.
    return raw.strip().lower()[:320] if isinstance(raw, str) else "-"


def _account_in_json() -> str:
    # The API reads the body as JSON whatever its Content-Type, and so does this key. A key
    # must not raise: Flask-Limiter would take that for a storage failure.
    try:
        body = request.get_json(force=True, silent=True, cache=True)
    except HTTPException:  # e.g. a body over 1 MiB, which the view answers with 413
        body = None
    return _account(body.get("email") if isinstance(body, dict) else None)


def _account_in_form() -> str:
    try:
        return _account(request.form.get("email"))
    except HTTPException:
        return _account(None)


def _token_user() -> str:
    # Set by bearer_required, which runs first: a request without a valid token never gets here.
    return str(g.credentials.user_id)


# --- limits ----------------------------------------------------------------------------------


def _settings() -> Settings:
    settings: Settings = current_app.config["EVENTFLOW"]
    return settings


def _login_limit() -> str:
    return _settings().rate_limit_login


def _register_limit() -> str:
    return _settings().rate_limit_register


def _ingest_limit() -> str:
    return _settings().rate_limit_ingest or ""


def _status_of(exc: Exception) -> int:
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, HTTPException) and exc.code:
        return exc.code
    return 500


def _refund_unless(
    counts: Callable[[int], bool], cost: Callable[[], int] = lambda: 1
) -> Callable[[View], View]:
    """Give back what the view's limits counted when `counts(status)` says the request does not.

    Flask-Limiter counts the request before the view runs, in one atomic increment; the refund
    takes it back afterwards. Counting only afterwards instead (its deduct_when) would check
    before and count after, so a burst of parallel guesses would all pass the check before the
    first of them was counted.
    """

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> ResponseReturnValue:
            try:
                response = current_app.make_response(view(*args, **kwargs))
            except Exception as exc:
                if not counts(_status_of(exc)):
                    _refund(cost())
                raise
            if not counts(response.status_code):
                _refund(cost())
            return response

        return wrapper

    return decorate


def _refund(amount: int = 1) -> None:
    for counted in limiter.current_limits:
        try:
            limiter.limiter.hit(counted.limit, *counted.request_args, cost=-amount)
        except Exception:  # storage down: the request stays counted until its window ends
            logger.warning("could not take back a hit on %s", counted.key, exc_info=True)


def limit_failed_logins(email_from: str) -> Callable[[View], View]:
    """Decorator for a login view: failed attempts per account and per client address.

    `email_from` is "json" (the API) or "form" (the dashboard). Both views share the two
    counters, so failures on one lock the other. Over the limit, even the right password gets
    429 until the window ends; other accounts from other addresses are unaffected.
    """
    account = {"json": _account_in_json, "form": _account_in_form}[email_from]
    message = "too many failed login attempts"

    def decorate(view: View) -> View:
        counted = _refund_unless(lambda status: status == 401)(view)
        per_account = limiter.shared_limit(
            _login_limit, scope="login-account", key_func=account, error_message=message
        )
        per_address = limiter.shared_limit(
            _login_limit, scope="login-address", key_func=client_address, error_message=message
        )
        # The innermost limit is checked first: a locked-out address reaches no account's count.
        limited = per_account(per_address(counted))

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> ResponseReturnValue:
            try:
                return limited(*args, **kwargs)
            except RateLimitExceeded:
                # A refused attempt tried no password, so it counts against no one: retrying
                # a locked account does not use up the address's allowance, nor the reverse.
                _refund()
                raise

        return wrapper

    return decorate


def limit_registrations(view: View) -> View:
    """Decorator for the register view: every attempt counts against the client's address."""
    return limiter.limit(
        _register_limit,
        key_func=client_address,
        error_message="too many registrations from this address",
    )(view)


@overload
def limit_ingest(view: View) -> View: ...


@overload
def limit_ingest(*, cost: Callable[[], int] | None = None) -> Callable[[View], View]: ...


def limit_ingest(
    view: View | None = None, *, cost: Callable[[], int] | None = None
) -> View | Callable[[View], View]:
    """Decorator for ingest, applied inside bearer_required: events per user per window.

    Unset (the default), the view runs as it is: no key, no storage round trip. Single events
    and batches share one count per user, and a batch passes `cost`, its number of events: the
    limit counts events, as Sidekiq's and BullMQ's limiters count jobs, so batching does not
    multiply a user's allowance. A refused batch costs nothing, so what is left of the window
    still takes a smaller batch.
    """

    def decorate(view: View) -> View:
        amount = cost or (lambda: 1)
        # A token that verifies but whose session is gone (ingest checks it in its INSERT) gets
        # a 401 there: that request is not the user's, so it is taken back.
        counted = _refund_unless(lambda status: status != 401, amount)(view)
        limited = limiter.shared_limit(
            _ingest_limit,
            scope="ingest",
            key_func=_token_user,
            error_message="ingest rate limit exceeded",
            cost=amount,
        )(counted)

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> ResponseReturnValue:
            if _settings().rate_limit_ingest is None:
                return view(*args, **kwargs)
            try:
                return limited(*args, **kwargs)
            except RateLimitExceeded:
                if cost is not None:  # a refused single event finds the window full anyway
                    _refund(amount())
                raise

        return wrapper

    return decorate(view) if view is not None else decorate
