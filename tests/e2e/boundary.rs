//! The internal trust boundary, attacked the way someone with access to the services' ports
//! (or a lying gateway) would: every RPC of every service, enumerated from the compiled
//! protobuf descriptors so that a new RPC without a policy or without a test fails here.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use p2_proto::common::v1::CallerAssertion;
use p2_runtime::internal::{CallerPolicy, Component, ComponentCredential, InternalKey};
use prost::Message as _;
use tonic::Code;

use crate::helpers::{Backend, TEST_PASSWORD, TestStack, csr_for, register_and_login, spawn_stack};

/// RPCs that act for no actor, and why they need no caller assertion. Anything else must take
/// a `polyproto.common.v1.CallerAssertion`.
const WITHOUT_ASSERTION: &[(&str, &str)] = &[
    (
        "/polyproto.identity.v1.Identity/GetServerIdCert",
        "public data",
    ),
    (
        "/polyproto.identity.v1.Identity/GetServerPublicKey",
        "public data",
    ),
    (
        "/polyproto.identity.v1.Identity/RegisterActor",
        "creates an ordinary actor, open registration only",
    ),
    ("/polyproto.identity.v1.Identity/GetActor", "public data"),
    (
        "/polyproto.identity.v1.Identity/IssueLoginCert",
        "proven by the password in the request",
    ),
    (
        "/polyproto.identity.v1.Identity/GetActorIdCerts",
        "public data",
    ),
    (
        "/polyproto.session.v1.Session/Authenticate",
        "proven by the token in the request",
    ),
    (
        "/polyproto.session.v1.Session/Login",
        "proven by the password in the request",
    ),
    (
        "/polyproto.session.v1.Session/CreateKeyTrial",
        "public (spec 4.1.1)",
    ),
    (
        "/polyproto.session.v1.Session/CompleteKeyTrial",
        "proven by the key trial signature",
    ),
    (
        "/polyproto.session.v1.Session/ListKeyTrials",
        "public (spec 4.3)",
    ),
    (
        "/polyproto.session.v1.Session/GetForeignActorIdCerts",
        "public data (idcert/actor of a foreign actor)",
    ),
    ("/polyproto.discovery.v1.Discovery/Discover", "public data"),
    (
        "/polyproto.events.v1.Events/Publish",
        "services publish on their own authority",
    ),
    (
        "/polyproto.events.v1.Events/OpenSession",
        "the session service owns sessions (only it may call)",
    ),
    (
        "/polyproto.events.v1.Events/CloseSession",
        "the session service owns sessions (only it may call)",
    ),
    (
        "/polyproto.events.v1.Events/Invalidate",
        "cache invalidations of the gateways, for no actor (only the gateway may call)",
    ),
    (
        "/polyproto.events.v1.Events/WatchInvalidations",
        "the gateways' invalidation feed, for no actor (only the gateway may call)",
    ),
];

/// One RPC from the descriptors.
#[derive(Debug, Clone)]
struct Rpc {
    path: String,
    /// Index into the stack's gRPC addresses.
    server: usize,
    /// The service's caller policy.
    policy: CallerPolicy,
    /// Field number of the request's `CallerAssertion`, if it has one.
    assertion_field: Option<u32>,
}

fn every_rpc() -> Vec<Rpc> {
    let set = prost_types::FileDescriptorSet::decode(p2_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut messages = std::collections::HashMap::new();
    for file in &set.file {
        for message in &file.message_type {
            let name = format!(".{}.{}", file.package(), message.name());
            messages.insert(name, message.clone());
        }
    }
    let mut rpcs = Vec::new();
    for file in &set.file {
        for service in &file.service {
            let full = format!("{}.{}", file.package(), service.name());
            let (server, policy) = match full.as_str() {
                "polyproto.identity.v1.Identity" => (0, p2_identity::CALLERS),
                "polyproto.session.v1.Session" => (1, p2_session::CALLERS),
                "polyproto.discovery.v1.Discovery" => (2, p2_discovery::CALLERS),
                "polyproto.events.v1.Events" => (3, p2_events::CALLERS),
                other => panic!("a service this test does not know: {other}"),
            };
            for method in &service.method {
                let input = &messages[method.input_type()];
                let assertion_field = input
                    .field
                    .iter()
                    .find(|f| f.type_name() == ".polyproto.common.v1.CallerAssertion")
                    .map(|f| u32::try_from(f.number()).unwrap());
                rpcs.push(Rpc {
                    path: format!("/{full}/{}", method.name()),
                    server,
                    policy,
                    assertion_field,
                });
            }
        }
    }
    assert!(rpcs.len() >= 25, "only {} RPCs found", rpcs.len());
    rpcs
}

/// A codec that sends and receives raw message bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let len = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, len).to_vec()))
    }
}

/// Calls `rpc` on `addr` with `body`, presenting `credential` (or nothing); returns the code.
async fn call(
    addr: SocketAddr,
    rpc: &Rpc,
    credential: Option<&ComponentCredential>,
    body: Vec<u8>,
) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(body);
    if let Some(credential) = credential {
        credential.apply(request.metadata_mut());
    }
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(rpc.path.as_str()).unwrap();
    match grpc.unary::<_, Vec<u8>, _>(request, path, Raw).await {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

/// A request message whose only field is the assertion `token` in field `field`.
fn with_assertion(field: u32, token: Vec<u8>) -> Vec<u8> {
    let inner = CallerAssertion { token }.encode_to_vec();
    let mut out = Vec::new();
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(inner.len() as u64, &mut out);
    out.extend_from_slice(&inner);
    out
}

fn allowed(rpc: &Rpc) -> &'static [Component] {
    rpc.policy
        .iter()
        .find(|(path, _)| *path == rpc.path)
        .map(|(_, callers)| *callers)
        .unwrap_or_else(|| panic!("{} has no entry in its service's CALLERS", rpc.path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_callers_without_this_deployments_credential() {
    let stack = spawn_stack(Backend::Sqlite).await;
    let running = stack.stack.as_ref().unwrap();
    let addrs = running.grpc_addrs;
    let key = &running.internal_key;
    let stranger = InternalKey::generate();
    let rpcs = every_rpc();
    for rpc in &rpcs {
        let addr = addrs[rpc.server];
        // No credential at all, and another deployment's credential of an allowed component.
        let status = call(addr, rpc, None, Vec::new()).await;
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{}: {status:?}",
            rpc.path
        );
        let foreign = stranger.credential(allowed(rpc)[0]);
        let status = call(addr, rpc, Some(&foreign), Vec::new()).await;
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{}: {status:?}",
            rpc.path
        );
        // A component of this deployment that is not on the RPC's list.
        for component in Component::ALL {
            if allowed(rpc).contains(&component) {
                continue;
            }
            let status = call(addr, rpc, Some(&key.credential(component)), Vec::new()).await;
            assert_eq!(
                status.code(),
                Code::PermissionDenied,
                "{} called by {component}: {status:?}",
                rpc.path
            );
        }
    }
    // The health service stays open for probes.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", addrs[0]))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "polyproto.identity.v1.Identity".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serving.status, 1, "SERVING");
    drop(stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_that_acts_for_an_actor_refuses_missing_forged_or_expired_assertions() {
    let stack = spawn_stack(Backend::Sqlite).await;
    let alice = register_and_login(&stack, "alice").await;
    let running = stack.stack.as_ref().unwrap();
    let addrs = running.grpc_addrs;
    let key = &running.internal_key;
    let rpcs = every_rpc();
    let exempt: BTreeSet<&str> = WITHOUT_ASSERTION.iter().map(|(path, _)| *path).collect();
    let now = p2_runtime::internal::unix_now_ms();
    let forged =
        InternalKey::generate()
            .assertion_key()
            .mint(&alice.fid, &alice.session_id, now + 60_000);
    let expired = key
        .assertion_key()
        .mint(&alice.fid, &alice.session_id, now - 1);
    for rpc in &rpcs {
        let Some(field) = rpc.assertion_field else {
            assert!(
                exempt.contains(rpc.path.as_str()),
                "{} acts without a caller assertion and is not on the documented list",
                rpc.path
            );
            continue;
        };
        assert!(
            !exempt.contains(rpc.path.as_str()),
            "{} is listed but takes one",
            rpc.path
        );
        let credential = key.credential(allowed(rpc)[0]);
        for (what, body) in [
            ("missing", Vec::new()),
            ("forged", with_assertion(field, forged.clone())),
            ("expired", with_assertion(field, expired.clone())),
            (
                "garbage",
                with_assertion(field, b"alice@p2.test is admin".to_vec()),
            ),
        ] {
            let status = call(addrs[rpc.server], rpc, Some(&credential), body).await;
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{} with a {what} assertion: {status:?}",
                rpc.path
            );
        }
    }
    // Nothing of alice's changed: her token still works, with her one cert.
    let response = stack
        .http
        .get(stack.url("/.p2/core/v1/challenge"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// A gateway that lies: it holds the gateway credential and a real assertion of a non-admin
/// actor, and asks for what that actor may not have.
async fn a_lying_gateway_cannot_act_beyond_the_asserted_actor(stack: TestStack) {
    use p2_proto::identity::v1 as identity;
    use p2_proto::session::v1 as session;
    let alice = register_and_login(&stack, "alice").await;
    let bob = register_and_login(&stack, "bob").await;
    let running = stack.stack.as_ref().unwrap();
    let credential = running.internal_key.credential(Component::Gateway);
    let channel = |i: usize| {
        p2_runtime::grpc::channel(&format!("http://{}", running.grpc_addrs[i]), &credential)
            .unwrap()
    };
    let mut identity = identity::identity_client::IdentityClient::new(channel(0));
    let mut session = session::session_client::SessionClient::new(channel(1));
    let assertion = session
        .authenticate(session::AuthenticateRequest {
            token: alice.token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .assertion;

    // Rotating the server key: alice is no admin, whatever the gateway believes.
    let before = identity
        .get_server_id_cert(identity::GetServerIdCertRequest { timestamp: None })
        .await
        .unwrap()
        .into_inner();
    let status = identity
        .rotate_server_key(identity::RotateServerKeyRequest {
            caller: assertion.clone(),
            sensitive_solution: TEST_PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let after = identity
        .get_server_id_cert(identity::GetServerIdCertRequest { timestamp: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.cert, after.cert, "the key was rotated");

    // Signing a CSR directly: only the session service may ask identity for that.
    let (bob_csr, _) = csr_for("bob", "stolen");
    let status = identity
        .sign_csr(identity::SignCsrRequest {
            caller: assertion.clone(),
            csr: bob_csr.clone().into_bytes(),
            sensitive_solution: TEST_PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Through session, with alice's proof and password, a CSR for bob's name is refused.
    let status = session
        .request_id_cert(session::RequestIdCertRequest {
            caller: assertion.clone(),
            csr: bob_csr.into_bytes(),
            sensitive_solution: TEST_PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bob_certs = identity
        .get_actor_id_certs(identity::GetActorIdCertsRequest {
            fid: bob.fid.clone(),
            timestamp: None,
            session_id: Some("stolen".into()),
            not_before: None,
            not_after: None,
        })
        .await
        .unwrap()
        .into_inner()
        .certs;
    assert!(bob_certs.is_empty(), "a cert was issued for bob");

    // Deleting bob's session: alice's proof names alice, so "s1" is alice's own session id.
    let status = session
        .delete_session(session::DeleteSessionRequest {
            caller: assertion.clone(),
            session_id: Some("nonexistent".into()),
            sensitive_solution: Some(TEST_PASSWORD.into()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let response = stack
        .http
        .get(stack.url("/.p2/core/v1/challenge"))
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "bob's session must survive");

    // An assertion the gateway made up (it has no assertion key) is worthless.
    let made_up = CallerAssertion {
        token: InternalKey::generate()
            .assertion_key()
            .mint(&bob.fid, &bob.session_id, u64::MAX),
    };
    let status = session
        .delete_session(session::DeleteSessionRequest {
            caller: Some(made_up),
            session_id: None,
            sensitive_solution: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

crate::on_both_backends!(a_lying_gateway_cannot_act_beyond_the_asserted_actor);
