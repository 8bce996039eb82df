"""Real processes for the tests and the benchmarks: gunicorn, workers, flask commands, Redis.

Shared by tests/conftest.py (fixtures) and bench/harness.py, so both start the app the same
way. Nothing here needs pytest: a wait that runs out raises WaitTimeout (an AssertionError, so
a test reports it as a failure), a process that dies raises ProcessError with its output.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
T = TypeVar("T")


class WaitTimeout(AssertionError):
    """What wait_for waited for did not happen in time."""


class ProcessError(RuntimeError):
    """A process we started exited, or never became ready; the message carries its output."""


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 20.0,
    interval: float = 0.05,
    message: str = "",
) -> T:
    """Poll until predicate() is truthy; return its value or raise WaitTimeout naming `message`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def app_environment(
    database_url: str, redis_url: str, instance: str, eventflow_env: str, **extra: str
) -> dict[str, str]:
    """This process's environment without EVENTFLOW_*, set up for the app, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTFLOW_")}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        EVENTFLOW_ENV=eventflow_env,
        EVENTFLOW_INSTANCE_PATH=instance,
        **extra,
    )
    return env


class Process:
    """A process of ours (gunicorn, a worker, Redis), its output kept in a file for failures.

    It runs in a session of its own, so stopping it also stops whatever it started.
    """

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, wait; SIGKILL the whole group if it will not go. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9 the process and everything it started."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def flask_args(*args: str) -> list[str]:
    """The command line of `flask --app wsgi ARGS`."""
    return [str(BIN / "flask"), "--app", "wsgi", *args]


def flask_cli(
    env: dict[str, str], *args: str, check: bool = False, timeout: float | None = 120
) -> subprocess.CompletedProcess[str]:
    """Run `flask --app wsgi ARGS` as a real command; the finished process, output as text.

    With `check`, a non-zero exit raises ProcessError carrying the command's output.
    """
    done = subprocess.run(
        flask_args(*args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        raise ProcessError(f"`flask {' '.join(args)}` failed:\n{done.stdout}{done.stderr}")
    return done


def start_worker(env: dict[str, str], log_path: Path, *args: str) -> Process:
    """Start `flask --app wsgi worker ARGS`."""
    return Process(flask_args("worker", *args), env, log_path)


def launch_gunicorn(
    env: dict[str, str], log_path: Path, *args: str, port: int | None = None
) -> tuple[Process, str]:
    """Start `gunicorn -c gunicorn.conf.py ARGS wsgi:app` on a free port: (process, base URL)."""
    port = port or free_port()
    command = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}"]
    return Process([*command, *args, "wsgi:app"], env, log_path), f"http://127.0.0.1:{port}"


def _health_status(url: str, timeout: float) -> int | None:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, http.client.HTTPException):
        return None


def wait_until_serving(
    proc: Process, url: str, statuses: Iterable[int] = (200, 503), timeout: float = 30.0
) -> None:
    """Wait until gunicorn answers /health with one of `statuses` (a worker may take seconds to
    boot under load); ProcessError, with its output, if it exits or does not answer in time."""
    wanted = set(statuses)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ProcessError(f"gunicorn exited:\n{proc.output()}")
        if _health_status(url, timeout=10) in wanted:
            return
        time.sleep(0.1)
    raise ProcessError(f"gunicorn did not answer /health in {timeout:g} s:\n{proc.output()}")


def start_redis(log_path: Path, port: int | None = None) -> tuple[Process, str]:
    """A redis-server of our own without persistence, once it answers: (process, URL)."""
    port = port or free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = Process([*args, "--appendonly", "no", "--daemonize", "no"], dict(os.environ), log_path)
    url = f"redis://127.0.0.1:{port}/0"

    def answers() -> bool:
        if proc.poll() is not None:
            raise ProcessError(f"redis-server exited:\n{proc.output()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        wait_for(answers, timeout=10, message=f"redis-server on port {port}")
    except WaitTimeout:
        proc.kill()
        raise ProcessError(f"redis-server did not start:\n{proc.output()}") from None
    return proc, url
