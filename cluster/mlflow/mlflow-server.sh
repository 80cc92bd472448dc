#!/usr/bin/env bash
# The MLflow tracking server every node of a sweep writes to: runs in PostgreSQL, artifacts
# (trial.json, final checkpoints) on a shared disk or an S3-compatible store, proxied by
# the server (clients need no storage credentials).
#
#   MLFLOW_DB_URI=postgresql+psycopg://mlflow:PASSWORD@DBHOST:5432/mlflow \
#   MLFLOW_ARTIFACTS=/shared/mlartifacts cluster/mlflow/mlflow-server.sh
#
# Change (or set in the environment): the four values below. For S3-compatible storage
# (MinIO, Ceph) set MLFLOW_ARTIFACTS=s3://BUCKET/mlflow plus AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY and MLFLOW_S3_ENDPOINT_URL, and `pip install boto3`.
set -euo pipefail
DB_URI=${MLFLOW_DB_URI:?set MLFLOW_DB_URI=postgresql+psycopg://USER:PASSWORD@HOST:5432/DB}
ARTIFACTS=${MLFLOW_ARTIFACTS:?set MLFLOW_ARTIFACTS to a shared path or s3://BUCKET/PREFIX}
HOST=${MLFLOW_HOST:-0.0.0.0}  # the interface to listen on
PORT=${MLFLOW_PORT:-5000}
# Host names clients use, when not localhost or a private IP (MLflow refuses others).
ALLOWED_HOSTS=${MLFLOW_ALLOWED_HOSTS:-}

args=(server --backend-store-uri "$DB_URI" --artifacts-destination "$ARTIFACTS"
      --host "$HOST" --port "$PORT" --workers "${MLFLOW_WORKERS:-4}")
[ -n "$ALLOWED_HOSTS" ] && args+=(--allowed-hosts "$ALLOWED_HOSTS")
if [ "${DRY_RUN:-0}" = 1 ]; then echo mlflow "${args[@]}"; exit 0; fi
exec mlflow "${args[@]}"
