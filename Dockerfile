# One image for every Python part of docker-compose.yml: the MLflow servers (mlflow + psycopg2
# + boto3 for s3:// artifact destinations), the Ray head, and the migrator driver.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    MLFLOW_DISABLE_TELEMETRY=true

WORKDIR /app
COPY . /app
RUN pip install .

CMD ["python", "-m", "migrator", "--help"]
