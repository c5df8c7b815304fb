"""The embedded default: a real Celery worker with no Redis, RabbitMQ or PostgreSQL.

Celery dropped its SQLAlchemy broker, so the broker here is kombu's ``filesystem://``
transport: messages are files in a folder that the producer and the worker share.
A real prefork worker consumes them (it polls, so pickup takes about a second), the
result backend is Celery's ``file://`` backend, and the job table is a SQLite file in
WAL mode. Everything lives under one directory; nothing runs in the background.

It is for trying morag-jobs out, demos and single-machine use; for several machines,
point ``broker_url`` at Redis or RabbitMQ and the job table at PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["embedded_settings"]


def embedded_settings(directory: str | Path) -> dict[str, Any]:
    """``app.conf`` settings (and ``morag_jobs_database_url``) for the embedded default."""
    root = Path(directory).resolve()
    queue = root / "broker" / "queue"
    processed = root / "broker" / "processed"
    control = root / "broker" / "control"
    results = root / "results"
    for folder in (queue, processed, control, results):
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": "filesystem://",
        "broker_transport_options": {
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "processed_folder": str(processed),
            "control_folder": str(control),  # else kombu writes ./control in the cwd
            "store_processed": False,
        },
        "result_backend": f"file://{results}",
        "broker_connection_retry_on_startup": True,
        "morag_jobs_database_url": f"sqlite:///{root / 'jobs.db'}",
    }
