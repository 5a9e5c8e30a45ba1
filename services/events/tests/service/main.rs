//! Service tests of the events service, one binary: the store conformance suite (the
//! in-process store with paused time, and real Redis), the gRPC boundary through a real tonic
//! server, and replicas sharing one Redis. Redis comes from P2_TEST_REDIS_URL, which
//! `scripts/test.sh` sets; tests needing it fail without it.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;
mod conformance;
mod grpc;
mod replicas;
