# The pipeline image used by docker-compose.yml (worker and replay); the same code `make up` runs.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY agents ./agents
COPY tables ./tables
COPY web ./web
RUN pip install --no-cache-dir -e .
CMD ["faust", "-A", "pipeline.app", "worker", "-l", "info"]
