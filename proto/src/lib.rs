//! Protobuf contracts of the polyproto home server, compiled by `build.rs` into `OUT_DIR`.
//!
//! Layout: one package per service, `polyproto.<service>.v1`, plus `polyproto.common.v1` for the
//! messages several services share. The `.proto` files under `proto/polyproto/` document every
//! field; this crate only re-exports the generated code. It knows nothing of the domain model:
//! conversions live at each edge (service crates and the gateway).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Every `.proto` of this crate as an encoded `google.protobuf.FileDescriptorSet`, so tests can
/// enumerate every service and RPC (a new RPC without a boundary test fails the suite).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// Shared messages.
pub mod common {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("polyproto.common.v1");
    }
}

/// The identity service: server keys and root certs, actors, actor ID-Certs.
pub mod identity {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("polyproto.identity.v1");
    }
}

/// The session service: tokens, challenges, key trials, foreign sessions.
pub mod session {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("polyproto.session.v1");
    }
}

/// The discovery service: discoverable service providers per actor.
pub mod discovery {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("polyproto.discovery.v1");
    }
}

/// The events service: per-actor event log, fan-out, polling.
pub mod events {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("polyproto.events.v1");
    }
}
