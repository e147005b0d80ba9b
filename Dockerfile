# The pipeline's services (producer, stream workers, sink, provision) for docker-compose.yml,
# and its one-shot security-init (run as root there: it hands each container its files).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY infra ./infra
COPY producers ./producers
COPY stream_app ./stream_app
COPY consumers ./consumers
COPY orchestration ./orchestration
COPY bench ./bench
RUN pip install --no-cache-dir .
RUN useradd --create-home --uid 10001 app
USER app
CMD ["python", "-m", "infra", "provision"]
