"""``morag-jobs demo``: a real Celery worker, the API and the dashboard on a temporary setup.

``tasks`` is the demo's Celery app (one task per source of progress; ``celery -A
morag_jobs.demo.tasks worker`` in ``docker-compose.yml`` too); ``run`` is the command that
starts a worker for it, submits one job per source and draws their bars. Neither is
imported here: the app reads the environment the command sets up first.
"""
