"""``GET /api/v1/schema/job``: the JSON Schema of a job, for clients in other languages.

The job object ``GET /api/v1/jobs/{id}`` answers (and each item of ``GET /api/v1/jobs``)
is ``JobView``; its schema, as pydantic writes it for what the API sends (JSON Schema
2020-12, serialization mode), is served here so a client can generate types or validate
answers without reading Python. It holds no data, so it needs no key; it changes only
with the server's version, so it is cacheable: an ``ETag`` for a cheap revalidation
(``If-None-Match`` answers 304) and ``Cache-Control`` for an hour.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from typing import Any, Final

from fastapi import APIRouter, Request, Response

from morag_jobs.api.schemas import JobView

__all__ = ["job_schema", "router"]

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
CACHE_CONTROL: Final = "public, max-age=3600"
_MEDIA_TYPE: Final = "application/schema+json"

router = APIRouter(prefix="/api/v1/schema", tags=["schema"])


@cache
def job_schema() -> dict[str, Any]:
    """The JSON Schema of the job object the job routes answer."""
    schema = JobView.model_json_schema(mode="serialization")
    return {
        "$schema": DIALECT,
        **schema,
        "title": "Job",
        "description": (
            "A job as GET /api/v1/jobs/{id} answers it, and each item of GET /api/v1/jobs: "
            "the stored job (no hidden fields) plus eta_seconds, worked out when the answer "
            "is made. percentage is the overall 0-100 (mapped through the stage plan); "
            "stage_percent is within the current stage. Timestamps are ISO 8601. "
            "Fields may be added in later versions; clients should ignore unknown ones."
        ),
    }


@cache
def _body() -> tuple[bytes, str]:
    content = json.dumps(job_schema(), sort_keys=True, separators=(",", ":")).encode()
    return content, f'"{hashlib.sha256(content).hexdigest()[:32]}"'


@router.get(
    "/job",
    summary="JSON Schema of a job",
    response_class=Response,
    responses={
        200: {"description": "The schema (JSON Schema 2020-12).",
              "content": {_MEDIA_TYPE: {"schema": {"type": "object"}}}},
        304: {"description": "Not modified: the client's copy (If-None-Match) is current."},
    },
)
def get_job_schema(request: Request) -> Response:
    """The JSON Schema of the job object ``GET /api/v1/jobs/{id}`` answers, for clients
    in other languages. No key needed (it is documentation); cache it by its ``ETag``."""
    content, etag = _body()
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if etag in _etags(request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    return Response(content, media_type=_MEDIA_TYPE, headers=headers)


def _etags(header: str) -> set[str]:
    """The tags of an ``If-None-Match`` header (``*`` matches any; weak tags compare equal)."""
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
    return {_body()[1]} if "*" in tags else tags
