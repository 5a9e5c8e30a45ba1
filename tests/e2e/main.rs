//! End-to-end tests: the real stack on free ports, driven over HTTP the way a client does, and
//! the reference SDK (`polyproto` 0.21) checking what we serve.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod helpers;
mod split;

mod actors;
mod boundary;
mod cancellation;
mod challenges;
mod cli;
mod compression;
mod contract;
mod discovery;
mod events_rest;
mod federation;
mod gateway_compression;
mod gateway_hardening;
mod gateway_resume;
mod gateway_ws;
mod interop;
mod interop_gateway;
mod invalidation_feed;
mod metrics;
mod openapi;
mod operations;
mod permessage_deflate;
mod rate_limits;
mod readiness;
mod redis_restart;
mod replicas;
mod sdk_pki;
mod server_identity;
mod traces;
