"""Request bodies and query values, checked strictly with one cattrs converter."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import attrs
import cattrs
from aiohttp import web
from cattrs.gen import make_dict_structure_fn

from precheck.errors import Invalid, NotJson
from precheck.service.as_of import position_of
from precheck.web import keys
from precheck.web.body_reading import read_whole

T = TypeVar("T")


@attrs.frozen
class CreateRun:
    """Body of `POST /api/v1/prechecks`."""

    upload_id: str
    top_cell: str
    die_id: str = "FFFFFFFF"
    slot: str | None = None
    cob: bool = False
    preflight: str = "enforce"  # warn: queue a layout that fails pre-flight, recording why
    notify: Any = None  # checked by `web/notify_policy.py`: its messages name the item
    output_format: str | None = None  # `gds` or `oas`; None: `defaults.output_format`
    cache: bool = True  # false: run it even when an identical run ended before


@attrs.frozen
class RerunRequest:
    """Body of `POST /api/v1/prechecks/{id}/rerun` (optional): other notifications."""

    notify: Any = None  # None: those of the run re-run


@attrs.frozen
class PruneRequest:
    """Body of `POST /api/v1/prechecks/prune`."""

    status: list[str] | None = None
    older_than_days: float | None = None
    dry_run: bool = False
    reason: str = ""


@attrs.frozen
class RetentionPruneRequest:
    """Body of `POST /api/v1/retention/prune`."""

    dry_run: bool = False


@attrs.frozen
class IssueKeyRequest:
    """Body of `POST /api/v1/keys`."""

    name: str
    role: str = "user"


def _strict(kind: type, name: str) -> Any:
    def check(v: Any, _: Any) -> Any:
        if type(v) is not kind:
            raise TypeError(f"expected {name}")
        return v

    return check


_conv = cattrs.Converter(forbid_extra_keys=True)
_conv.register_structure_hook(str, _strict(str, "a string"))
_conv.register_structure_hook(bool, _strict(bool, "true or false"))
_conv.register_structure_hook(int, _strict(int, "an integer"))
_conv.register_structure_hook(float, lambda v, _: _number(v))
# cattrs would take any iterable as a list: a string as its letters, an object as its keys.
_conv.register_structure_hook_func(lambda t: t == list[str], lambda v, _: _string_list(v))
for _cls in (CreateRun, RerunRequest, PruneRequest, IssueKeyRequest):
    _conv.register_structure_hook(
        _cls, make_dict_structure_fn(_cls, _conv, _cattrs_forbid_extra_keys=True)
    )


def _string_list(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise TypeError("expected a list of strings")
    return list(v)


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < float("inf"):
        raise TypeError("expected a number of at least 0")
    return float(v)


def structure(raw: Any, cls: type[T]) -> T:
    """`raw` as a `cls`, or `Invalid` naming the first bad field."""
    if not isinstance(raw, dict):
        raise Invalid("request body must be a JSON object")
    try:
        return _conv.structure(raw, cls)
    except cattrs.BaseValidationError as e:
        reason, _, where = cattrs.transform_error(e, path="$")[0].rpartition(" @ ")
        field = where.removeprefix("$").lstrip(".")
        if reason.startswith("extra fields found"):
            raise Invalid(f"unknown field {reason.split('(', 1)[-1].rstrip(')')}") from None
        if reason == "required field missing":
            raise Invalid(f"{field} is required") from None
        raise Invalid(f"{field}: {reason}") from None


def require_json(request: web.Request) -> None:
    """Refuse a body that is not declared JSON: a form or text a browser may send across sites
    without asking is never read as a command."""
    if request.body_exists and request.content_type != "application/json":
        raise NotJson(
            f"the body must be JSON with Content-Type: application/json, not {request.content_type}"
        )


async def json_body(request: web.Request, cls: type[T]) -> T:
    """The request's JSON body as a `cls`."""
    require_json(request)
    try:
        raw = json.loads(await read_whole(request) or b"null")
        # JSON may spell a lone surrogate (`"\ud800"`): not text that can be stored.
        json.dumps(raw, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise Invalid("request body is nested too deeply") from None
    except UnicodeEncodeError:
        raise Invalid("request body holds text that is not valid Unicode") from None
    except (ValueError, UnicodeDecodeError):
        raise Invalid("request body is not valid JSON") from None
    return structure(raw, cls)


def query_float(
    request: web.Request, name: str, default: float, low: float = 0, high: float | None = None
) -> float:
    """A numeric query value, at least `low` (and at most `high`, if given)."""
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise Invalid(f"{name} must be a number") from None
    if not value >= low or value == float("inf"):
        raise Invalid(f"{name} must be a number of at least {low:g}")
    if high is not None and value > high:
        raise Invalid(f"{name} must be a number of at most {high:g}")
    return value


MAX_INT = 2**63 - 1


async def as_of_position(request: web.Request) -> int:
    """`?as_of=` as a log position: a number, or an ISO time with its zone (400 otherwise)."""
    try:
        return await position_of(request.app[keys.STORE], request.query["as_of"])
    except ValueError as e:
        raise Invalid(f"as_of: a log position or an ISO time: {e}") from None


def query_int(request: web.Request, name: str, default: int | None, low: int = 0) -> int | None:
    """A whole-number query value, at least `low`."""
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise Invalid(f"{name} must be a whole number") from None
    if value < low:
        raise Invalid(f"{name} must be at least {low}")
    if value > MAX_INT:  # SQLite's integers are 64-bit
        raise Invalid(f"{name} must be at most {MAX_INT}")
    return value


def query_bool(request: web.Request, name: str) -> bool:
    """A flag: `1`, `true`, `yes` are true; absent, `0`, `false`, `no` are false."""
    text = request.query.get(name, "").lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise Invalid(f"{name} must be true or false")
