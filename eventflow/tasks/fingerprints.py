"""Which error group a failed attempt belongs to: its fingerprint.

A fingerprint is the exception's class, its message with the parts that vary from event to event
normalised (quoted values, UUIDs, hex strings, numbers) and the innermost traceback frame in
handler code (`module:function`: not the pipeline's own frames, not the standard library's or
an installed package's). Two failures with the same three fall together.

The worker computes it from the live exception; the migration that groups the history computes
it from the stored text of a traceback. Both read the same (file, function) pairs and the same
final `Class: message` line, so an old failure and a new one of the same error share a group.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
import sysconfig
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MAX_MESSAGE = 500
# Only this much of a message is read (the worker stores 2,000 characters of its error line):
# a handler's megabyte-long message costs no more to group than any other.
MAX_READ = 2000
# A worker that died mid-attempt left no exception: its attempts form a group of their own.
LOST_EXCEPTION = "WorkerLost"
LOST_MESSAGE = "worker lost while processing (no heartbeat within the visibility timeout)"

# In this order: a quoted value may hold anything (numbers, ids), an id may hold digits.
_NORMALISE = [
    (re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""), "<str>"),
    (
        re.compile(r"\b[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b", re.I),
        "<uuid>",
    ),
    (
        # Eight or more hex digits with at least one digit: ids, hashes, long numbers alike (a
        # 12-digit sku that happens to have no letter is the same kind of value as one that has).
        re.compile(r"\b0x[0-9a-f]+\b|\b(?=[0-9a-f]*\d)[0-9a-f]{8,}\b", re.I),
        "<hex>",
    ),
    (re.compile(r"\b\d+\b"), "<n>"),  # each run of digits: 3.5 -> <n>.<n>, an IP -> <n>.<n>.<n>.<n>
    (re.compile(r"\s+"), " "),
]
_PIPELINE = Path(__file__).resolve().parent.parent  # the eventflow package
_BUILTIN_HANDLERS = Path(__file__).resolve().parent / "builtin.py"
_LIBRARIES = tuple(
    {
        str(Path(p).resolve())
        for k, p in sysconfig.get_paths().items()
        if k in ("stdlib", "purelib", "platlib")
    }
)
_FRAME_LINE = re.compile(r'^  File "(?P<file>[^"]+)", line \d+, in (?P<function>.+)$')


@dataclass(frozen=True)
class Fingerprint:
    exception: str  # the class, with its module unless a built-in: "ValueError", "app.errors.Oops"
    message: str  # normalised
    frame: str  # "module:function", or "" when no frame of handler code was involved

    @property
    def digest(self) -> str:
        """The group's key: the same for every failure of the same error."""
        key = f"{self.exception}\n{self.message}\n{self.frame}".encode()
        return hashlib.sha256(key).hexdigest()


LOST = Fingerprint(LOST_EXCEPTION, LOST_MESSAGE, "")


def normalise_message(message: str) -> str:
    """The message without what varies between occurrences: 'order 42' -> 'order <n>'."""
    message = message[:MAX_READ]
    for pattern, replacement in _NORMALISE:
        message = pattern.sub(replacement, message)
    return message.strip()[:MAX_MESSAGE]


def exception_name(exc_type: type[BaseException]) -> str:
    """The class as tracebacks print it: qualified by its module unless it is a built-in."""
    module = exc_type.__module__
    name = exc_type.__qualname__
    return name if module in ("builtins", "__main__") else f"{module}.{name}"


def fingerprint_exception(exc: BaseException) -> Fingerprint:
    """The fingerprint of an exception a handler raised, from its live traceback."""
    frames = [(frame.filename, frame.name) for frame in traceback.extract_tb(exc.__traceback__)]
    return Fingerprint(
        exception_name(type(exc)), normalise_message(str(exc)), handler_frame(frames)
    )


def fingerprint_text(error: str | None, traceback_text: str | None) -> Fingerprint:
    """The fingerprint of a failure recorded before grouping: its error and traceback text.

    The error column holds "Class: message" (the class without its module); the traceback's
    last line names the class as fingerprint_exception does.
    """
    name, _, message = (error or "").partition(": ")
    frames: list[tuple[str, str]] = []
    lines = (traceback_text or "").rstrip("\n").splitlines()
    # The last "Traceback" block is the exception that was caught (earlier ones are its causes).
    start = max((i for i, line in enumerate(lines) if line.startswith("Traceback ")), default=-1)
    for line in lines[start + 1 :]:
        found = _FRAME_LINE.match(line)
        if found:
            frames.append((found["file"], found["function"]))
    final = lines[-1] if lines and start >= 0 else ""
    qualified, sep, _ = final.partition(":")
    if sep and qualified.rsplit(".", 1)[-1] == name:
        name = qualified
    return Fingerprint(name or "Exception", normalise_message(message), handler_frame(frames))


def handler_frame(frames: Sequence[tuple[str, str]]) -> str:
    """`module:function` of the innermost frame in handler code, or "" if there is none."""
    for filename, function in reversed(frames):
        if _is_handler_code(filename):
            return f"{module_of(filename)}:{function}"
    return ""


@functools.lru_cache(maxsize=4096)
def _is_handler_code(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen …>, <string>: not the application's code
        return False
    path = Path(filename).resolve()
    if path.is_relative_to(_PIPELINE):
        return path == _BUILTIN_HANDLERS
    return not str(path).startswith(_LIBRARIES)


@functools.lru_cache(maxsize=4096)
def module_of(filename: str) -> str:
    """The module a source file was imported as (or, if none was, its path under sys.path)."""
    modules = list(sys.modules.items())
    for name, module in modules:
        if getattr(module, "__file__", None) == filename and name != "__main__":
            return name
    path = Path(filename).resolve()
    for name, module in modules:
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and name != "__main__" and Path(file).resolve() == path:
            return name
    for root in sorted((Path(p or ".").resolve() for p in sys.path), key=lambda r: -len(r.parts)):
        if path.is_relative_to(root):
            return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
    return path.stem
