"""Jinja filters that turn numbers, durations, times and JSON into what an admin reads."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint


def format_count(value: Any) -> str:
    """12345 -> '12,345'; None -> an em dash."""
    if value is None:
        return "—"
    return f"{int(value):,}"


def format_total(page: Any) -> str:
    """A listing's total: '12,345', or '10,000+' when it was counted no further."""
    return format_count(page.total) + ("+" if page.capped else "")


def format_rate(value: Any) -> str:
    """Events per second: one decimal below 10/s, whole numbers above."""
    if value is None:
        return "—"
    number = float(value)
    return f"{number:,.1f}" if number < 10 else f"{number:,.0f}"


def format_ms(value: Any) -> str:
    """A latency: '850 ms', '1.2 s', '3 min'; None (no samples yet) -> an em dash."""
    if value is None:
        return "—"
    ms = float(value)
    if ms < 1000:
        return f"{ms:,.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:,.1f} s"
    return f"{ms / 60_000:,.1f} min"


def format_bytes(value: Any) -> str:
    """A size in binary units: '812 B', '1.5 MiB', '12.3 GiB'; None -> an em dash."""
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TiB"


def format_time(moment: datetime | None) -> str:
    """'2025-11-25 03:12:44 UTC'; None -> an em dash."""
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def unix_clock(seconds: float) -> str:
    """A Unix time as '03:12:44 UTC'."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%H:%M:%S UTC")


def unix_iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def iso_time(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).isoformat()


def duration_between(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "—"
    return format_ms((end - start).total_seconds() * 1000)


def pretty_json(value: Any) -> str:
    """Indented JSON, non-ASCII kept readable; Jinja escapes it on output."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def json_diff(old: Any, new: Any) -> list[tuple[str, str]]:
    """A unified diff of two JSON values, pretty-printed: (kind, line), kind add|del|hunk|same."""
    lines = difflib.unified_diff(
        pretty_json(old).splitlines(), pretty_json(new).splitlines(), lineterm="", n=3
    )
    kinds = {"+": "add", "-": "del", "@": "hunk", " ": "same"}
    # The first two lines name the files (---/+++): there are none here.
    return [(kinds.get(line[:1], "same"), line) for line in list(lines)[2:]]


def short_id(value: Any) -> str:
    """The first block of a UUID: enough to tell events apart in a table."""
    return str(value).split("-", 1)[0]


SPARK_WIDTH, SPARK_HEIGHT = 120, 28


def spark_bars(counts: list[int]) -> list[tuple[float, float, float, float]]:
    """A bar chart of counts as SVG rectangles (x, y, width, height) in a SPARK_WIDTH x
    SPARK_HEIGHT box: the tallest bar fills it, an empty slot is a 1-unit stub."""
    if not counts:
        return []
    slot = SPARK_WIDTH / len(counts)
    peak = max(max(counts), 1)
    bars = []
    for index, count in enumerate(counts):
        height = max(1.0, round(count / peak * SPARK_HEIGHT, 1)) if count else 1.0
        bars.append((round(index * slot, 2), SPARK_HEIGHT - height, round(slot - 1, 2), height))
    return bars


def register_filters(bp: Blueprint) -> None:
    filters: dict[str, Callable[..., str]] = {
        "count": format_count,
        "total": format_total,
        "rate": format_rate,
        "ms": format_ms,
        "bytes": format_bytes,
        "utc": format_time,
        "iso": iso_time,
        "unix_clock": unix_clock,
        "unix_iso": unix_iso,
        "pretty_json": pretty_json,
        "short_id": short_id,
    }
    for name, func in filters.items():
        bp.add_app_template_filter(func, name)
    bp.add_app_template_global(duration_between, "duration_between")
    bp.add_app_template_global(spark_bars, "spark_bars")
    bp.add_app_template_global(json_diff, "json_diff")
