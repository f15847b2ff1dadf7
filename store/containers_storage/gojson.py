"""JSON and time text exactly as containers/storage's Go code writes them.

c/storage marshals with ``jsoniter.ConfigCompatibleWithStandardLibrary``: compact, map keys sorted,
``<``, ``>``, ``&``, U+2028 and U+2029 escaped as ``\\u003c`` ..., struct fields in declaration order
(we keep dict insertion order, which is how we build records and how podman's files read back).
``time.Time`` marshals as RFC 3339 with nanoseconds, trailing zeros trimmed, ``Z`` for UTC.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_ESCAPE_RE = re.compile("[<>&\u2028\u2029]")


def _sort_maps(value: Any, *, top: bool) -> Any:
    # Records (lists of dicts at the top and the dicts themselves) keep their field order; nested
    # maps (flags, big-data-sizes, big-data-digests) are Go maps and marshal sorted.
    if isinstance(value, dict):
        items = value.items() if top else sorted(value.items())
        return {k: _sort_maps(v, top=False) for k, v in items}
    if isinstance(value, list):
        return [_sort_maps(v, top=top) for v in value]
    return value


def go_json_dumps(records: list[dict[str, Any]]) -> bytes:
    """Marshal a layers.json/images.json array as c/storage does."""
    ordered = [_sort_maps(r, top=True) for r in records]
    text = json.dumps(ordered, ensure_ascii=False, separators=(",", ":"))
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], text).encode("utf-8")


def go_json_string(value: Any) -> str:
    """``json.Marshal`` of a small value (the ``metadata`` string c/image stores), keys sorted."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], text)


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)


def format_go_time(when: datetime, nanos: int | None = None) -> str:
    """``time.Time.MarshalJSON``: RFC3339Nano, trailing fractional zeros trimmed, ``Z`` when the offset is 0."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    frac_ns = nanos if nanos is not None else when.microsecond * 1000
    base = when.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{frac_ns:09d}".rstrip("0")
    offset = when.utcoffset() or timedelta(0)
    if offset == timedelta(0):
        zone = "Z"
    else:
        total = int(offset.total_seconds())
        sign = "+" if total > 0 else "-"
        total = abs(total)
        zone = f"{sign}{total // 3600:02d}:{(total % 3600) // 60:02d}"
    return f"{base}.{frac}{zone}" if frac else f"{base}{zone}"


def now_go_time() -> str:
    """``time.Now().UTC()`` as c/storage records ``created`` (nanosecond resolution)."""
    ns = time.time_ns()
    when = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC)
    return format_go_time(when, ns % 1_000_000_000)


def parse_go_time(text: str) -> tuple[datetime, int] | None:
    """Parse RFC 3339 as Go's ``time.Parse`` accepts it; returns (datetime, nanoseconds) or None."""
    m = _RFC3339.match(text)
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac = m.group(7) or ""
    nanos = int(frac.ljust(9, "0")) if frac else 0
    zone = m.group(8)
    if zone in ("Z", "z"):
        tz: timezone = UTC
    else:
        sign = 1 if zone[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    try:
        when = datetime(year, month, day, hour, minute, second, nanos // 1000, tzinfo=tz)
    except ValueError:
        return None
    return when, nanos


def normalize_go_time(text: str) -> str | None:
    """Re-marshal a config's ``created`` text as Go would after parsing it (keeps nanoseconds and offset)."""
    parsed = parse_go_time(text)
    if parsed is None:
        return None
    when, nanos = parsed
    return format_go_time(when, nanos)
