-- Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d):
-- docker-compose.yml mounts this file there, and the Kubernetes dev overlay
-- (deploy/k8s/overlays/dev) mounts it from the ConfigMap `postgres-init` that
-- deploy/postgres/kustomization.yaml generates from it.
--
-- One database per service, so no service can read another's tables; each service runs its own
-- migrations at start. The services' role `polyproto` gets the password in POSTGRES_PASSWORD
-- (the container's environment, read with psql's \getenv, PostgreSQL 15 or newer): no password
-- is written down here. Local development and the dev overlay only: in production use managed
-- PostgreSQL with one role per service (see deploy/README.md).
\getenv polyproto_password POSTGRES_PASSWORD
CREATE ROLE polyproto WITH LOGIN PASSWORD :'polyproto_password';

CREATE DATABASE polyproto_identity OWNER polyproto;
CREATE DATABASE polyproto_session OWNER polyproto;
CREATE DATABASE polyproto_discovery OWNER polyproto;

REVOKE ALL ON DATABASE polyproto_identity FROM PUBLIC;
REVOKE ALL ON DATABASE polyproto_session FROM PUBLIC;
REVOKE ALL ON DATABASE polyproto_discovery FROM PUBLIC;
