"""``GET /api/v1/schema/job``: the job's JSON Schema, checked by a validator nobody here wrote.

The ``jsonschema`` package (the ``dev`` extra) validates real answers of
``GET /api/v1/jobs/{id}`` and ``GET /api/v1/jobs`` against the schema the server serves,
and refuses answers bent out of shape, so the schema says something.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from morag_jobs.stages import StagePlan
from tests.api_helpers import Api, running_api

jsonschema = pytest.importorskip("jsonschema")

SCHEMA_URL = "/api/v1/schema/job"
PLAN = StagePlan({"download": (0, 10), "processing": (10, 70), "indexing": (70, 100)})


@pytest.fixture
def api(sqlite_url: str) -> Iterator[Api]:
    with running_api(sqlite_url) as running:
        yield running


def validator(api: Api) -> Any:
    response = api.client.get(SCHEMA_URL)  # no key: it is documentation
    assert response.status_code == 200, response.text
    schema = response.json()
    cls = jsonschema.validators.validator_for(schema)
    assert cls is jsonschema.Draft202012Validator, "the schema names its dialect"
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_the_job_schema_validates_real_job_answers(api: Api) -> None:
    admin = api.key("admin")
    check = validator(api)
    running = api.job(name="talk.mp3", job_type="audio", stages=PLAN, user_id="u1",
                      metadata={"source": "upload", "sizes": [1, 2.5]})
    report = api.progress(running.id, admin, wait=True, percentage=50, stage="processing",
                          current=5, total=10, sequence=1, message="segment 5 of 10")
    assert report.status_code == 200, report.text
    bare = api.job()
    ended = api.job(name="done")
    assert api.complete(ended.id, admin, success=False, message="corrupt input").status_code \
        == 200

    answers = []
    for job_id in (running.id, bare.id, ended.id):
        response = api.get(f"/api/v1/jobs/{job_id}", admin)
        assert response.status_code == 200, response.text
        answers.append(response.json())
    listed = api.get("/api/v1/jobs", admin)
    assert listed.status_code == 200, listed.text
    answers += listed.json()["items"]
    assert len(answers) == 6
    for answer in answers:
        problems = [error.message for error in check.iter_errors(answer)]
        assert problems == [], f"a real answer does not fit the schema: {problems}\n{answer}"
    detailed = answers[0]
    assert (detailed["stage"], detailed["current"], detailed["stages"][1][0]) == (
        "processing", 5, "processing"), "the running job has every kind of field filled"
    assert set(detailed) == set(check.schema["properties"]), (
        "the schema names exactly the fields the API answers with")

    bent = [
        {**detailed, "status": "DONE"},
        {**detailed, "percentage": "40"},
        {**detailed, "stages": [["download", "0", 10]]},
        {**detailed, "current": 2.5},
        {key: value for key, value in detailed.items() if key != "id"},
    ]
    for answer in bent:
        assert not check.is_valid(answer), f"the schema let a bent answer through: {answer}"


def test_the_job_schema_needs_no_key_and_revalidates_by_etag(api: Api) -> None:
    first = api.client.get(SCHEMA_URL)
    assert first.status_code == 200, first.text
    assert first.headers["content-type"].startswith("application/schema+json")
    etag, cache_control = first.headers["etag"], first.headers["cache-control"]
    assert etag.startswith('"') and "max-age=" in cache_control, first.headers
    assert first.json()["title"] == "Job"

    for tag in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = api.client.get(SCHEMA_URL, headers={"If-None-Match": tag})
        assert again.status_code == 304 and again.content == b"", (tag, again.status_code)
        assert again.headers["etag"] == etag
    changed = api.client.get(SCHEMA_URL, headers={"If-None-Match": '"an old one"'})
    assert changed.status_code == 200 and changed.content == first.content

    assert SCHEMA_URL in api.app.openapi()["paths"], "the route is in the API's own docs"
