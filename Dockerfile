# The morag-jobs image: the API server, or a Celery worker running an app with the plugin.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY morag_jobs ./morag_jobs
COPY parsers ./parsers
RUN pip install --no-cache-dir ".[all]"
RUN useradd --create-home morag
USER morag
EXPOSE 8000
CMD ["morag-jobs", "serve", "--host", "0.0.0.0", "--port", "8000"]
