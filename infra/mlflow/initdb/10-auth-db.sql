-- Run once by the postgres image on an empty data directory (docker-entrypoint-initdb.d):
-- a second database for MLflow's basic-auth users, owned by the same role as the tracking
-- database (POSTGRES_USER), so the auth tables and the tracking tables never share a schema.
CREATE DATABASE mlflow_auth OWNER mlflow;
