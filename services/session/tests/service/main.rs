//! Service tests of the session service, one binary: the storage conformance suites (real
//! SQLite, PostgreSQL, Redis and the in-process store), tests calling the gRPC trait directly,
//! and the event outbox's rows and relay (a fake events service on loopback). PostgreSQL and
//! Redis come from P2_TEST_POSTGRES_URL and P2_TEST_REDIS_URL, which `scripts/test.sh` sets;
//! tests needing them fail without them.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod challenge_store;
mod common;
mod events;
mod expiry;
mod fake_identity;
mod grpc;
mod session_store;
