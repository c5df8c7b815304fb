"""Fuzzing the HTTP API: no input ever makes it answer 5xx, and bad input changes nothing.

Progress and completion bodies are generated (valid ones, and valid ones broken in
known ways: NaN, wrong types, extra fields, huge strings, NUL characters, lone
surrogates); every GET route in ``app.openapi()`` gets random path parameters and query
strings. Runs on SQLite and on PostgreSQL, where text the database cannot store would
surface as a driver error if it got through.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from api_helpers import Api, running_api
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
JSON_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=True, allow_infinity=True)
                | st.text(max_size=40) | st.sampled_from(["\x00", "\ud800", "50", ""]))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
TIMESTAMPS = st.sampled_from(["2026-03-01T12:00:00Z", "2026-03-01T12:00:00.123456+02:00",
                              "2026-03-01T12:00:00", "2026-03-01"])
VALID_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=60)


@st.composite
def valid_reports(draw: st.DrawFn) -> dict[str, Any]:
    report: dict[str, Any] = {
        "percentage": draw(st.floats(0, 100) | st.integers(0, 100)),
        "message": draw(VALID_TEXT),
        "timestamp": draw(TIMESTAMPS),
    }
    optional = {
        "stage": VALID_TEXT.filter(bool).map(lambda s: s[:128]),
        "current": st.integers(0, 2**63 - 1),
        "total": st.integers(1, 2**63 - 1),
        "sequence": st.integers(0, 2**63 - 1),
    }
    for name in draw(st.sets(st.sampled_from(sorted(optional)))):
        report[name] = draw(optional[name])
    return report


BREAKS: dict[str, Any] = {
    "percentage not finite": lambda r, d: r | {"percentage": d(st.sampled_from(
        [float("nan"), float("inf"), float("-inf")]))},
    "percentage out of range": lambda r, d: r | {"percentage": d(
        st.floats(max_value=-1e-9) | st.floats(min_value=100.000001) | st.integers(101))},
    "percentage not a number": lambda r, d: r | {"percentage": d(
        st.text() | st.booleans() | st.none() | st.lists(st.integers()))},
    "message not text": lambda r, d: r | {"message": d(
        st.integers() | st.none() | st.lists(st.text()) | st.booleans())},
    "message with NUL": lambda r, d: r | {"message": d(VALID_TEXT) + "\x00"},
    "message with a lone surrogate": lambda r, d: r | {"message": "a\udc80b"},
    "message too long": lambda r, d: r | {"message": "m" * d(st.integers(4097, 60_000))},
    "unknown field": lambda r, d: r | {d(st.text(min_size=1).filter(
        lambda k: k not in r and k not in {"stage", "current", "total", "sequence"})):
        d(JSON_VALUES)},
    "required field missing": lambda r, d: _without(
        r, d(st.sampled_from(["percentage", "message", "timestamp"]))),
    "counts wrong": lambda r, d: r | {d(st.sampled_from(["current", "total", "sequence"])):
                                      d(st.sampled_from([-1, 2**63, 1.5, "3", True]))},
    "stage wrong": lambda r, d: r | {"stage": d(st.sampled_from(["", "s" * 129, 5, "\x00"]))},
    "not an object": lambda r, d: d(st.lists(JSON_VALUES, max_size=3) | JSON_SCALARS),
}


def _without(report: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in report.items() if key != name}


@st.composite
def reports(draw: st.DrawFn) -> tuple[bytes, str]:
    """(body, what it is): "valid", a key of BREAKS, or "garbage" (invalid JSON)."""
    kind = draw(st.sampled_from(["valid", "valid", *BREAKS, "garbage"]))
    if kind == "garbage":
        return draw(st.binary(max_size=200).filter(_not_json)), kind
    report = draw(valid_reports())
    if kind != "valid":
        report = BREAKS[kind](report, draw)
    return json.dumps(report, allow_nan=True).encode(), kind


def _not_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return True
    return False


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    with running_api(database_url, max_body_bytes=16 * 1024) as running:
        yield running


@pytest.fixture
def admin(api: Api) -> str:
    return api.key("admin")


@FUZZ
@given(case=reports(), wait=st.booleans())
def test_fuzzed_progress_reports_never_fail_the_server(
    api: Api, admin: str, case: tuple[bytes, str], wait: bool
) -> None:
    raw, kind = case
    job = api.job()
    response = api.client.put(
        f"/api/v1/remote-jobs/{job.id}/progress" + ("?wait=true" if wait else ""),
        content=raw, headers={**api.auth(admin), "Content-Type": "application/json"},
    )
    assert response.status_code < 500, f"{kind}: {raw[:200]!r} -> {response.text[:300]}"
    if kind == "valid":
        assert response.status_code in (200, 202), f"valid {raw[:200]!r}: {response.text}"
        return
    expected = {413} if len(raw) > 16 * 1024 else {422}
    assert response.status_code in expected, f"{kind}: {raw[:200]!r} -> {response.text[:300]}"
    assert isinstance(response.json()["detail"], str)
    assert api.settled(job.id) == job, f"{kind}: a refused report must change nothing"


@FUZZ
@given(payload=st.dictionaries(st.sampled_from(["success", "message", "result", "extra"]),
                               JSON_VALUES, max_size=4))
def test_fuzzed_completions_never_fail_the_server(
    api: Api, admin: str, payload: dict[str, Any]
) -> None:
    job = api.job()
    response = api.client.post(
        f"/api/v1/remote-jobs/{job.id}/complete", content=json.dumps(payload, allow_nan=True),
        headers={**api.auth(admin), "Content-Type": "application/json"},
    )
    assert response.status_code < 500, f"{payload!r} -> {response.text[:300]}"
    if response.status_code != 200:
        assert api.store.require_job(job.id) == job, "a refused completion changes nothing"


PARAM_TEXT = st.text(max_size=30) | st.sampled_from(
    ["", "-1", "0", "501", "99999999999999999999", "PENDING", "processing", "-percentage",
     "\x00", "%00", "../../etc", "a" * 300, "true", "nan"])


@st.composite
def get_requests(draw: st.DrawFn, routes: list[tuple[str, list[str], list[str]]]) -> Any:
    path, path_params, query_params = draw(st.sampled_from(routes))
    for name in path_params:
        path = path.replace("{" + name + "}", quote(draw(PARAM_TEXT.filter(bool)), safe=""))
    names = draw(st.lists(st.sampled_from([*query_params, "junk", "access_token"]),
                          max_size=4))
    query = [(name, draw(PARAM_TEXT)) for name in names]
    key = draw(st.sampled_from(["admin", "user", "worker", "none", "garbage"]))
    return path, query, key


def _get_routes(api: Api) -> list[tuple[str, list[str], list[str]]]:
    routes = []
    for path, item in api.app.openapi()["paths"].items():
        op = item.get("get")
        if op is None:
            continue
        params = op.get("parameters", [])
        routes.append((path, [p["name"] for p in params if p["in"] == "path"],
                       [p["name"] for p in params if p["in"] == "query"]))
    return routes


def test_random_get_requests_to_every_route_never_fail_the_server(api: Api) -> None:
    keys = {"admin": api.key("admin"), "user": api.key("user", "alice"),
            "worker": api.key("worker", "w1"), "none": None, "garbage": "mjk_zz_top"}
    for n in range(3):
        api.job(user_id="alice", job_type="audio", name=f"j{n}")
    api.handler.handle_job_completion(api.job(job_id="done-job", user_id="alice").id, True)
    routes = _get_routes(api)
    assert len(routes) >= 7, "every GET route of the API is exercised"

    @FUZZ
    @given(request=get_requests(routes))
    def one(request: tuple[str, list[tuple[str, str]], str]) -> None:
        path, query, who = request
        key = keys[who]
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # A stream that is valid goes on for ever: read the status, then hang up.
        with api.client.stream("GET", path, params=query, headers=headers) as response:
            status = response.status_code
            if status != 200 or "event-stream" not in response.headers.get("content-type", ""):
                response.read()
        assert status < 500, f"GET {path} {query} as {who} -> {status}"

    one()
