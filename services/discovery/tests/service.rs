//! Service tests of the discovery RPCs, called through the gRPC trait against real SQLite
//! and real PostgreSQL (the same portable implementation serves both), with an in-memory
//! actor directory standing in for the identity service.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use p2_discovery::directory::{ActorDirectory, LocalActor};
use p2_discovery::grpc::MAX_PROVIDERS_PER_ACTOR;
use p2_discovery::store::Store;
use p2_discovery::{DiscoveryError, DiscoveryGrpc, MIGRATIONS};
use p2_model::FederationId;
use p2_proto::common::v1::{CallerAssertion, ServiceProvider};
use p2_proto::discovery::v1 as pb;
use p2_proto::discovery::v1::discovery_server::Discovery as _;
use tonic::{Code, Request};

const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";
const MOVED: &str = "moved@example.org";

/// Every actor's sensitive-action solution in these tests.
const SOLUTION: &str = "right horse battery";

/// The deployment key of these tests: assertions are minted and verified with it.
static KEY: std::sync::LazyLock<p2_runtime::internal::InternalKey> =
    std::sync::LazyLock::new(p2_runtime::internal::InternalKey::generate);

/// The actors "registered" on the test server.
struct Directory(HashMap<String, Option<String>>);

#[tonic::async_trait]
impl ActorDirectory for Directory {
    async fn actor(&self, fid: &FederationId) -> Result<Option<LocalActor>, DiscoveryError> {
        Ok(self.0.get(fid.as_str()).map(|redirect| LocalActor {
            fid: fid.to_string(),
            redirect_to: redirect.clone(),
        }))
    }

    async fn check_sensitive_solution(
        &self,
        assertion: &CallerAssertion,
        solution: &str,
    ) -> Result<(), DiscoveryError> {
        // As identity does: the solution belongs to the actor of a valid assertion.
        KEY.assertion_key()
            .verify(&assertion.token, p2_runtime::internal::unix_now_ms())?;
        if solution == SOLUTION {
            Ok(())
        } else {
            Err(DiscoveryError::SolutionRefused(
                p2_runtime::error::Reason::SensitiveSolutionWrong.denied("wrong"),
            ))
        }
    }
}

async fn postgres_url() -> String {
    p2_runtime::storage::fresh_test_postgres_database("discovery")
        .await
        .unwrap()
}

async fn open(url: &str) -> DiscoveryGrpc {
    p2_runtime::telemetry::init_for_tests();
    let db = p2_runtime::storage::connect(url, "discovery", MIGRATIONS)
        .await
        .unwrap();
    let mut actors = HashMap::new();
    actors.insert(ALICE.to_owned(), None);
    actors.insert(BOB.to_owned(), None);
    actors.insert(MOVED.to_owned(), Some("moved@elsewhere.example".to_owned()));
    DiscoveryGrpc::new(
        Store::new(db),
        Arc::new(Directory(actors)),
        KEY.assertion_key(),
    )
}

fn caller(fid: &str) -> Option<CallerAssertion> {
    let expires = p2_runtime::internal::unix_now_ms() + 60_000;
    Some(CallerAssertion {
        token: KEY.assertion_key().mint(fid, "s1", expires),
    })
}

fn provider(service: &str, url: &str, primary: bool) -> ServiceProvider {
    ServiceProvider {
        service: service.to_owned(),
        url: url.to_owned(),
        primary,
    }
}

async fn add(
    grpc: &DiscoveryGrpc,
    fid: &str,
    service: &str,
    url: &str,
    primary: bool,
) -> Result<ServiceProvider, tonic::Status> {
    grpc.add_service(Request::new(pb::AddServiceRequest {
        caller: caller(fid),
        provider: Some(provider(service, url, primary)),
    }))
    .await
    .map(|r| r.into_inner().provider.unwrap())
}

async fn remove(
    grpc: &DiscoveryGrpc,
    fid: &str,
    keys: &[(&str, &str)],
    sensitive_solved: bool,
) -> Result<pb::RemoveServiceResponse, tonic::Status> {
    grpc.remove_service(Request::new(pb::RemoveServiceRequest {
        caller: caller(fid),
        providers: keys
            .iter()
            .map(|(service, url)| pb::ProviderKey {
                service: (*service).to_owned(),
                url: (*url).to_owned(),
            })
            .collect(),
        sensitive_solution: sensitive_solved.then(|| SOLUTION.to_owned()),
    }))
    .await
    .map(tonic::Response::into_inner)
}

async fn set_primary(
    grpc: &DiscoveryGrpc,
    fid: &str,
    service: &str,
    url: &str,
) -> Result<Vec<ServiceProvider>, tonic::Status> {
    grpc.set_primary(Request::new(pb::SetPrimaryRequest {
        caller: caller(fid),
        service: service.to_owned(),
        url: url.to_owned(),
        sensitive_solution: SOLUTION.to_owned(),
    }))
    .await
    .map(|r| r.into_inner().providers)
}

async fn discover(
    grpc: &DiscoveryGrpc,
    fid: &str,
    service: Option<&str>,
    limit: Option<u64>,
) -> Result<pb::DiscoverResponse, tonic::Status> {
    grpc.discover(Request::new(pb::DiscoverRequest {
        fid: fid.to_owned(),
        service: service.map(str::to_owned),
        limit,
    }))
    .await
    .map(tonic::Response::into_inner)
}

async fn primaries(grpc: &DiscoveryGrpc, fid: &str, service: &str) -> Vec<String> {
    discover(grpc, fid, Some(service), None)
        .await
        .unwrap()
        .providers
        .into_iter()
        .filter(|p| p.primary)
        .map(|p| p.url)
        .collect()
}

// ---------------------------------------------------------------------------------------------

async fn the_first_provider_of_a_service_becomes_primary(grpc: DiscoveryGrpc) {
    let first = add(&grpc, ALICE, "chat", "https://one.example", false)
        .await
        .unwrap();
    assert_eq!(first, provider("chat", "https://one.example", true));
    let second = add(&grpc, ALICE, "chat", "https://two.example", false)
        .await
        .unwrap();
    assert!(!second.primary);
    // Another service and another actor have their own primaries.
    assert!(
        add(&grpc, ALICE, "files", "https://two.example", false)
            .await
            .unwrap()
            .primary
    );
    assert!(
        add(&grpc, BOB, "chat", "https://two.example", true)
            .await
            .unwrap()
            .primary
    );
    // The stored URL is normalised: scheme and host lower case.
    let third = add(&grpc, ALICE, "chat", "HTTPS://Three.Example/Base/", false)
        .await
        .unwrap();
    assert_eq!(third.url, "https://three.example/Base/");
}

async fn a_provider_listed_twice_is_already_exists(grpc: DiscoveryGrpc) {
    add(&grpc, ALICE, "chat", "https://one.example/x", false)
        .await
        .unwrap();
    for again in [
        "https://one.example/x",
        "https://ONE.example/x/",
        "HTTPS://one.example/x//",
    ] {
        let status = add(&grpc, ALICE, "chat", again, false).await.unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "{again}");
        let status = add(&grpc, ALICE, "chat", again, true).await.unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "{again}");
    }
    let listed = discover(&grpc, ALICE, None, None).await.unwrap().providers;
    assert_eq!(listed.len(), 1);
}

async fn asking_to_be_primary_when_there_is_one_is_failed_precondition(grpc: DiscoveryGrpc) {
    add(&grpc, ALICE, "chat", "https://one.example", true)
        .await
        .unwrap();
    let status = add(&grpc, ALICE, "chat", "https://two.example", true)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        p2_runtime::error::Reason::of(&status),
        Some(p2_runtime::error::Reason::PrimaryExists),
        "{}",
        status.message()
    );
    assert_eq!(
        primaries(&grpc, ALICE, "chat").await,
        ["https://one.example"]
    );
    assert_eq!(
        discover(&grpc, ALICE, None, None)
            .await
            .unwrap()
            .providers
            .len(),
        1
    );
}

async fn bad_input_is_invalid_argument(grpc: DiscoveryGrpc) {
    for (service, url) in [
        ("Chat", "https://one.example"),
        ("c", "https://one.example"),
        ("chat", "javascript:alert(1)"),
        ("chat", "/relative"),
        ("chat", "https://user@one.example"),
        (
            "chat",
            &format!("https://one.example/{}", "a".repeat(10_000)),
        ),
    ] {
        let status = add(&grpc, ALICE, service, url, false).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{service} {url:.40}");
    }
    let status = grpc
        .add_service(Request::new(pb::AddServiceRequest {
            caller: caller(ALICE),
            provider: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // An assertion naming no valid FID was not minted by a session service.
    let status = add(&grpc, "not a fid", "chat", "https://one.example", false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = remove(&grpc, ALICE, &[], true).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let many: Vec<(&str, &str)> = vec![("chat", "https://one.example"); 101];
    let status = remove(&grpc, ALICE, &many, true).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = set_primary(&grpc, ALICE, "chat", "ftp://one.example")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        discover(&grpc, ALICE, None, None)
            .await
            .unwrap()
            .providers
            .is_empty()
    );
}

async fn callers_not_registered_here_cannot_add_providers(grpc: DiscoveryGrpc) {
    let status = add(
        &grpc,
        "eve@elsewhere.example",
        "chat",
        "https://one.example",
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

async fn removing_a_primary_needs_the_sensitive_solution_and_promotes_the_oldest(
    grpc: DiscoveryGrpc,
) {
    add(&grpc, ALICE, "chat", "https://one.example", false)
        .await
        .unwrap();
    add(&grpc, ALICE, "chat", "https://two.example", false)
        .await
        .unwrap();
    add(&grpc, ALICE, "chat", "https://three.example", false)
        .await
        .unwrap();

    let status = remove(&grpc, ALICE, &[("chat", "https://one.example/")], false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // HTTP words (the header's name) are the gateway's; the service says why, by reason.
    assert!(status.message().contains("sensitive action"));
    assert_eq!(
        p2_runtime::error::Reason::of(&status),
        Some(p2_runtime::error::Reason::SensitiveSolutionRequired)
    );
    assert_eq!(
        primaries(&grpc, ALICE, "chat").await,
        ["https://one.example"]
    );

    // A non-primary needs no solution.
    let done = remove(&grpc, ALICE, &[("chat", "https://three.example")], false)
        .await
        .unwrap();
    assert_eq!(
        done.removed,
        [provider("chat", "https://three.example", false)]
    );
    assert!(done.promoted.is_empty());

    add(&grpc, ALICE, "chat", "https://four.example", false)
        .await
        .unwrap();
    let done = remove(&grpc, ALICE, &[("chat", "https://one.example")], true)
        .await
        .unwrap();
    assert_eq!(
        done.removed,
        [provider("chat", "https://one.example", true)]
    );
    // The oldest remaining provider is promoted.
    assert_eq!(
        done.promoted,
        [provider("chat", "https://two.example", true)]
    );
    assert_eq!(
        primaries(&grpc, ALICE, "chat").await,
        ["https://two.example"]
    );

    // Removing every provider leaves nothing to promote.
    let done = remove(
        &grpc,
        ALICE,
        &[
            ("chat", "https://two.example"),
            ("chat", "https://four.example"),
        ],
        true,
    )
    .await
    .unwrap();
    assert_eq!(done.removed.len(), 2);
    assert!(done.promoted.is_empty());
    assert!(
        discover(&grpc, ALICE, None, None)
            .await
            .unwrap()
            .providers
            .is_empty()
    );
}

async fn removal_is_all_or_nothing(grpc: DiscoveryGrpc) {
    add(&grpc, ALICE, "chat", "https://one.example", false)
        .await
        .unwrap();
    add(&grpc, ALICE, "chat", "https://two.example", false)
        .await
        .unwrap();
    let status = remove(
        &grpc,
        ALICE,
        &[
            ("chat", "https://two.example"),
            ("chat", "https://nope.example"),
        ],
        true,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        discover(&grpc, ALICE, None, None)
            .await
            .unwrap()
            .providers
            .len(),
        2
    );
    // Another actor's provider is not the caller's to remove.
    let status = remove(&grpc, BOB, &[("chat", "https://two.example")], true)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // Duplicates in one request count once.
    let done = remove(
        &grpc,
        ALICE,
        &[
            ("chat", "https://two.example"),
            ("chat", "https://two.example/"),
        ],
        false,
    )
    .await
    .unwrap();
    assert_eq!(done.removed.len(), 1);
}

async fn set_primary_swaps_and_reports_both_providers(grpc: DiscoveryGrpc) {
    add(&grpc, ALICE, "chat", "https://one.example", false)
        .await
        .unwrap();
    add(&grpc, ALICE, "chat", "https://two.example", false)
        .await
        .unwrap();
    let changed = set_primary(&grpc, ALICE, "chat", "https://TWO.example/")
        .await
        .unwrap();
    assert_eq!(
        changed,
        [
            provider("chat", "https://two.example", true),
            provider("chat", "https://one.example", false)
        ]
    );
    assert_eq!(
        primaries(&grpc, ALICE, "chat").await,
        ["https://two.example"]
    );
    // Already primary: one entry, no change.
    let changed = set_primary(&grpc, ALICE, "chat", "https://two.example")
        .await
        .unwrap();
    assert_eq!(changed, [provider("chat", "https://two.example", true)]);
    let status = set_primary(&grpc, ALICE, "chat", "https://three.example")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = set_primary(&grpc, ALICE, "files", "https://two.example")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        primaries(&grpc, ALICE, "chat").await,
        ["https://two.example"]
    );
}

async fn discover_follows_the_limit_rules(grpc: DiscoveryGrpc) {
    for (service, url) in [
        ("chat", "https://c1.example"),
        ("chat", "https://c2.example"),
        ("chat", "https://c3.example"),
        ("files", "https://f1.example"),
        ("files", "https://f2.example"),
    ] {
        add(&grpc, ALICE, service, url, false).await.unwrap();
    }
    let all = discover(&grpc, ALICE, None, None).await.unwrap();
    assert_eq!(all.providers.len(), 5);
    assert!(all.redirect_to.is_none());
    // Primaries first.
    assert!(all.providers[0].primary && all.providers[1].primary);
    assert!(all.providers[2..].iter().all(|p| !p.primary));

    let firsts = discover(&grpc, ALICE, None, Some(1))
        .await
        .unwrap()
        .providers;
    assert_eq!(
        firsts,
        [
            provider("chat", "https://c1.example", true),
            provider("files", "https://f1.example", true)
        ]
    );
    let three = discover(&grpc, ALICE, None, Some(3))
        .await
        .unwrap()
        .providers;
    assert_eq!(three.len(), 3);
    assert!(three[0].primary && three[1].primary);
    assert_eq!(
        discover(&grpc, ALICE, None, Some(u64::MAX))
            .await
            .unwrap()
            .providers
            .len(),
        5
    );

    let chat = discover(&grpc, ALICE, Some("chat"), None)
        .await
        .unwrap()
        .providers;
    assert_eq!(chat.len(), 3);
    assert!(chat.iter().all(|p| p.service == "chat"));
    assert_eq!(chat[0], provider("chat", "https://c1.example", true));
    let chat_primary = discover(&grpc, ALICE, Some("chat"), Some(1))
        .await
        .unwrap()
        .providers;
    assert_eq!(chat_primary, [provider("chat", "https://c1.example", true)]);
    let two = discover(&grpc, ALICE, Some("chat"), Some(2))
        .await
        .unwrap()
        .providers;
    assert_eq!(two.len(), 2);
    assert!(
        discover(&grpc, ALICE, Some("none"), None)
            .await
            .unwrap()
            .providers
            .is_empty()
    );

    // FIDs are case-insensitive.
    assert_eq!(
        discover(&grpc, "ALICE@Example.ORG", None, None)
            .await
            .unwrap()
            .providers
            .len(),
        5
    );
    // A registered actor without providers: an empty list (the gateway answers 204).
    assert!(
        discover(&grpc, BOB, None, None)
            .await
            .unwrap()
            .providers
            .is_empty()
    );

    let code = |r: Result<pb::DiscoverResponse, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(discover(&grpc, ALICE, None, Some(0)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(discover(&grpc, ALICE, Some("chat"), Some(0)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(discover(&grpc, "alice", None, None).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(discover(&grpc, "a@b@c", None, None).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(discover(&grpc, ALICE, Some("Bad Name"), None).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(discover(&grpc, "carol@example.org", None, None).await),
        Code::NotFound
    );
    assert_eq!(
        code(discover(&grpc, "alice@elsewhere.example", None, None).await),
        Code::NotFound
    );
}

async fn discover_reports_a_redirect(grpc: DiscoveryGrpc) {
    let found = discover(&grpc, MOVED, None, None).await.unwrap();
    assert_eq!(
        found.redirect_to.as_deref(),
        Some("moved@elsewhere.example")
    );
}

async fn an_actor_may_list_a_bounded_number_of_providers(grpc: DiscoveryGrpc) {
    assert_eq!(grpc.max_providers_per_actor(), MAX_PROVIDERS_PER_ACTOR);
    let grpc = grpc.with_max_providers_per_actor(SMALL_LIMIT);
    for i in 0..SMALL_LIMIT {
        // Across services: the bound is per actor.
        add(
            &grpc,
            ALICE,
            &format!("svc{}", i % 3),
            &format!("https://p{i}.example"),
            false,
        )
        .await
        .unwrap();
    }
    let status = add(&grpc, ALICE, "chat", "https://one.example", false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status
            .message()
            .contains(&format!("at most {SMALL_LIMIT} service providers")),
        "{}",
        status.message()
    );
    // A duplicate at the bound is still the limit (nothing is inserted either way).
    let status = add(&grpc, ALICE, "svc0", "https://p0.example", false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    add(&grpc, BOB, "chat", "https://one.example", false)
        .await
        .unwrap();
    assert_eq!(grpc.store().count(ALICE).await.unwrap(), SMALL_LIMIT);
}

/// The per-actor bound of the limit tests.
const SMALL_LIMIT: u64 = 20;

/// Adds `n` providers of ALICE at once, each its own URL under `tag`; how many were stored.
/// Every refusal must be the limit.
async fn add_concurrently(grpc: &DiscoveryGrpc, tag: &str, n: usize) -> u64 {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let grpc = grpc.clone();
        let url = format!("https://{tag}{i}.example");
        let service = format!("svc{}", i % 4);
        tasks.spawn(async move { add(&grpc, ALICE, &service, &url, false).await });
    }
    let mut stored = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(_) => stored += 1,
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        }
    }
    stored
}

async fn concurrent_adds_never_pass_the_limit_and_removals_free_capacity(grpc: DiscoveryGrpc) {
    let grpc = grpc.with_max_providers_per_actor(SMALL_LIMIT);
    assert_eq!(add_concurrently(&grpc, "a", 64).await, SMALL_LIMIT);
    let listed = discover(&grpc, ALICE, None, None).await.unwrap().providers;
    assert_eq!(listed.len() as u64, SMALL_LIMIT);
    assert_eq!(grpc.store().count(ALICE).await.unwrap(), SMALL_LIMIT);
    // Removing five (primaries among them, with the solution) frees exactly five places.
    let gone: Vec<(String, String)> = listed
        .iter()
        .take(5)
        .map(|p| (p.service.clone(), p.url.clone()))
        .collect();
    let keys: Vec<(&str, &str)> = gone.iter().map(|(s, u)| (s.as_str(), u.as_str())).collect();
    assert_eq!(
        remove(&grpc, ALICE, &keys, true)
            .await
            .unwrap()
            .removed
            .len(),
        5
    );
    // A removal that fails (one unknown provider) gives nothing back.
    let status = remove(&grpc, ALICE, &[("svc0", "https://nope.example")], true)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(add_concurrently(&grpc, "b", 64).await, 5);
    assert_eq!(grpc.store().count(ALICE).await.unwrap(), SMALL_LIMIT);
    assert_eq!(add_concurrently(&grpc, "c", 8).await, 0);
}

/// A database at migration 1 with `SMALL_LIMIT` providers of ALICE, then opened (and so
/// upgraded) like the service does.
async fn upgraded_with_providers(url: &str) -> DiscoveryGrpc {
    let db = p2_runtime::storage::connect(url, "discovery", &MIGRATIONS[..1])
        .await
        .unwrap();
    for i in 0..SMALL_LIMIT {
        sqlx::query(
            "INSERT INTO service_providers (fid, service, url_key, url, is_primary, added_at)
             VALUES ($1, 'bulk', $2, $2, FALSE, $3)",
        )
        .bind(ALICE)
        .bind(format!("https://p{i}.example"))
        .bind(i64::try_from(i).unwrap())
        .execute(&db.pool)
        .await
        .unwrap();
    }
    db.pool.close().await;
    open(url).await.with_max_providers_per_actor(SMALL_LIMIT)
}

async fn providers_stored_before_the_upgrade_count_against_the_limit(grpc: DiscoveryGrpc) {
    let status = add(&grpc, ALICE, "chat", "https://one.example", false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    remove(&grpc, ALICE, &[("bulk", "https://p3.example")], true)
        .await
        .unwrap();
    add(&grpc, ALICE, "chat", "https://one.example", false)
        .await
        .unwrap();
    add(&grpc, BOB, "chat", "https://one.example", false)
        .await
        .unwrap();
}

mod providers_stored_before_the_upgrade_count_against_the_limit {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = p2_runtime::storage::sqlite_url_in(dir.path(), "discovery");
        super::providers_stored_before_the_upgrade_count_against_the_limit(
            super::upgraded_with_providers(&url).await,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let url = super::postgres_url().await;
        super::providers_stored_before_the_upgrade_count_against_the_limit(
            super::upgraded_with_providers(&url).await,
        )
        .await;
    }
}

async fn the_database_refuses_a_second_primary(grpc: DiscoveryGrpc) {
    add(&grpc, ALICE, "chat", "https://one.example", false)
        .await
        .unwrap();
    let result = sqlx::query(
        "INSERT INTO service_providers (fid, service, url_key, url, is_primary, added_at)
         VALUES ($1, 'chat', 'https://two.example', 'https://two.example', TRUE, 1)",
    )
    .bind(ALICE)
    .execute(&grpc.store().database().pool)
    .await;
    let error = result.unwrap_err();
    assert!(
        error.as_database_error().unwrap().is_unique_violation(),
        "{error}"
    );
    // A second non-primary row is fine.
    sqlx::query(
        "INSERT INTO service_providers (fid, service, url_key, url, is_primary, added_at)
         VALUES ($1, 'chat', 'https://two.example', 'https://two.example', FALSE, 1)",
    )
    .bind(ALICE)
    .execute(&grpc.store().database().pool)
    .await
    .unwrap();
}

// --- Concurrency: the database keeps one primary whatever the interleaving. ------------------

const RACERS: usize = 16;

async fn concurrent_first_adds_make_exactly_one_primary(grpc: DiscoveryGrpc) {
    for round in 0..3 {
        let service = format!("race{round}");
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..RACERS {
            let grpc = grpc.clone();
            let service = service.clone();
            tasks.spawn(async move {
                add(
                    &grpc,
                    ALICE,
                    &service,
                    &format!("https://p{i}.example"),
                    false,
                )
                .await
            });
        }
        let mut primaries_seen = 0;
        while let Some(result) = tasks.join_next().await {
            primaries_seen += usize::from(result.unwrap().unwrap().primary);
        }
        assert_eq!(primaries_seen, 1, "round {round}");
        let listed = discover(&grpc, ALICE, Some(&service), None)
            .await
            .unwrap()
            .providers;
        assert_eq!(listed.len(), RACERS);
        assert_eq!(listed.iter().filter(|p| p.primary).count(), 1);
    }
}

async fn concurrent_primary_requests_let_exactly_one_win(grpc: DiscoveryGrpc) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..RACERS {
        let grpc = grpc.clone();
        tasks.spawn(async move {
            add(&grpc, ALICE, "chat", &format!("https://p{i}.example"), true).await
        });
    }
    let (mut won, mut refused) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(added) => {
                assert!(added.primary);
                won += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((won, refused), (1, RACERS - 1));
    assert_eq!(primaries(&grpc, ALICE, "chat").await.len(), 1);
}

async fn concurrent_primary_changes_and_removals_keep_one_primary(grpc: DiscoveryGrpc) {
    let urls: Vec<String> = (0..8).map(|i| format!("https://p{i}.example")).collect();
    for url in &urls {
        add(&grpc, ALICE, "chat", url, false).await.unwrap();
    }
    for round in 0..3 {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, url) in urls.iter().enumerate() {
            let grpc = grpc.clone();
            let url = url.clone();
            tasks.spawn(async move {
                // Every call must succeed: set-primary races are retried, not surfaced.
                set_primary(&grpc, ALICE, "chat", &url).await.map(|_| i)
            });
        }
        while let Some(result) = tasks.join_next().await {
            result
                .unwrap()
                .unwrap_or_else(|s| panic!("round {round}: {s:?}"));
        }
        assert_eq!(
            primaries(&grpc, ALICE, "chat").await.len(),
            1,
            "round {round}"
        );
    }

    // Removing the current primary while others change the primary: still exactly one.
    let mut tasks = tokio::task::JoinSet::new();
    let current = primaries(&grpc, ALICE, "chat").await.remove(0);
    {
        let grpc = grpc.clone();
        let current = current.clone();
        tasks.spawn(async move {
            remove(&grpc, ALICE, &[("chat", &current)], true)
                .await
                .map(|_| ())
        });
    }
    for url in urls.iter().filter(|u| **u != current).take(4) {
        let grpc = grpc.clone();
        let url = url.clone();
        tasks.spawn(async move { set_primary(&grpc, ALICE, "chat", &url).await.map(|_| ()) });
    }
    for url in ["https://late1.example", "https://late2.example"] {
        let grpc = grpc.clone();
        tasks.spawn(async move { add(&grpc, ALICE, "chat", url, false).await.map(|_| ()) });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    let listed = discover(&grpc, ALICE, Some("chat"), None)
        .await
        .unwrap()
        .providers;
    assert_eq!(listed.len(), urls.len() - 1 + 2);
    assert_eq!(listed.iter().filter(|p| p.primary).count(), 1, "{listed:?}");
}

async fn changes_need_a_valid_assertion_and_the_right_solution(grpc: DiscoveryGrpc) {
    add(&grpc, ALICE, "chat", "https://one.example", false)
        .await
        .unwrap();
    add(&grpc, ALICE, "chat", "https://two.example", false)
        .await
        .unwrap();
    let forged = Some(CallerAssertion {
        token: p2_runtime::internal::InternalKey::generate()
            .assertion_key()
            .mint(ALICE, "s1", u64::MAX),
    });
    let expired = Some(CallerAssertion {
        token: KEY.assertion_key().mint(ALICE, "s1", 1),
    });
    for caller in [None, forged, expired] {
        let status = grpc
            .add_service(Request::new(pb::AddServiceRequest {
                caller: caller.clone(),
                provider: Some(provider("chat", "https://three.example", false)),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        let status = grpc
            .set_primary(Request::new(pb::SetPrimaryRequest {
                caller: caller.clone(),
                service: "chat".into(),
                url: "https://two.example".into(),
                sensitive_solution: SOLUTION.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        let status = grpc
            .remove_service(Request::new(pb::RemoveServiceRequest {
                caller,
                providers: vec![pb::ProviderKey {
                    service: "chat".into(),
                    url: "https://two.example".into(),
                }],
                sensitive_solution: None,
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    // A missing or wrong solution changes nothing.
    for solution in ["", "wrong"] {
        let status = grpc
            .set_primary(Request::new(pb::SetPrimaryRequest {
                caller: caller(ALICE),
                service: "chat".into(),
                url: "https://two.example".into(),
                sensitive_solution: solution.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{solution:?}");
        assert!(p2_runtime::error::Reason::of(&status).is_some());
    }
    let status = grpc
        .remove_service(Request::new(pb::RemoveServiceRequest {
            caller: caller(ALICE),
            providers: vec![pb::ProviderKey {
                service: "chat".into(),
                url: "https://one.example".into(),
            }],
            sensitive_solution: Some("wrong".into()),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        primaries(&grpc, ALICE, "chat").await,
        vec!["https://one.example".to_owned()]
    );
    // Bob's assertion changes only Bob's table.
    let status = set_primary(&grpc, BOB, "chat", "https://two.example")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        primaries(&grpc, ALICE, "chat").await,
        vec!["https://one.example".to_owned()]
    );
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = p2_runtime::storage::sqlite_url_in(dir.path(), "discovery");
                    super::$name(super::open(&url).await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let url = super::postgres_url().await;
                    super::$name(super::open(&url).await).await;
                }
            }
        )*
    };
}

on_both_backends!(
    changes_need_a_valid_assertion_and_the_right_solution,
    the_first_provider_of_a_service_becomes_primary,
    a_provider_listed_twice_is_already_exists,
    asking_to_be_primary_when_there_is_one_is_failed_precondition,
    bad_input_is_invalid_argument,
    callers_not_registered_here_cannot_add_providers,
    removing_a_primary_needs_the_sensitive_solution_and_promotes_the_oldest,
    removal_is_all_or_nothing,
    set_primary_swaps_and_reports_both_providers,
    discover_follows_the_limit_rules,
    discover_reports_a_redirect,
    an_actor_may_list_a_bounded_number_of_providers,
    concurrent_adds_never_pass_the_limit_and_removals_free_capacity,
    the_database_refuses_a_second_primary,
    concurrent_first_adds_make_exactly_one_primary,
    concurrent_primary_requests_let_exactly_one_win,
    concurrent_primary_changes_and_removals_keep_one_primary,
);
