"""The HTTP API: remote workers report progress, people and systems read jobs.

``create_app(store, handler)`` builds the FastAPI app; ``morag-jobs serve`` runs it with
uvicorn. API keys are managed with ``morag-jobs keys`` (:mod:`morag_jobs.api.auth`).
"""

from morag_jobs._extras import require

require("morag_jobs.api", "fastapi", "prometheus_client")

from morag_jobs.api.app import ApiState, create_app, create_app_from_settings
from morag_jobs.api.auth import ApiKey, ApiKeys, Principal

__all__ = ["ApiKey", "ApiKeys", "ApiState", "Principal", "create_app", "create_app_from_settings"]
