-- Run once by the postgres image on an empty data directory (docker-compose.yml mounts it into
-- /docker-entrypoint-initdb.d). One database per service, so no service can read another's
-- tables; each service runs its own migrations at start.
-- Local development credentials only: in production use managed PostgreSQL with one role per
-- service (see deploy/README.md).
CREATE ROLE polyproto WITH LOGIN PASSWORD 'polyproto';

CREATE DATABASE polyproto_identity OWNER polyproto;
CREATE DATABASE polyproto_session OWNER polyproto;
CREATE DATABASE polyproto_discovery OWNER polyproto;

REVOKE ALL ON DATABASE polyproto_identity FROM PUBLIC;
REVOKE ALL ON DATABASE polyproto_session FROM PUBLIC;
REVOKE ALL ON DATABASE polyproto_discovery FROM PUBLIC;
