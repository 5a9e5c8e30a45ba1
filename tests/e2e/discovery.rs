//! Discoverable services over HTTP (core spec 9, API.md, issue 4): adding providers, the
//! primary rules, removal with promotion, the sensitive primary change, public discovery with
//! its limit rules, every bad input of the issue, concurrency on primaries — and the
//! reference SDK's own requests and parsers.

use polyproto::api::{HttpClient, ServiceDeleteResponse, Session};
use polyproto::errors::RequestError;
use polyproto::types::{FederationId, Service, ServiceName};
use polyproto::url::Url;
use serde_json::{Value, json};

use crate::helpers::{DOMAIN, TestSession, TestStack, expect_problem, register_and_login};
use crate::on_both_backends;
use crate::sdk_pki::{SdkPriv, SdkSig};

const SERVICES: &str = "/.p2/core/v1/services";
const PRIMARY: &str = "/.p2/core/v1/services/primary";

fn discover_path(fid: &str, rest: &str) -> String {
    format!("/.p2/core/v1/services/discover/{fid}{rest}")
}

/// `POST /services` with a raw body and no `Content-Type` (as the SDK sends it).
async fn post_raw(stack: &TestStack, session: &TestSession, body: String) -> reqwest::Response {
    stack
        .http
        .post(stack.url(SERVICES))
        .bearer_auth(&session.token)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Adds a provider with the OpenAPI body and returns the answered Service.
async fn add(stack: &TestStack, session: &TestSession, service: &str, url: &str) -> Value {
    let body = json!({ "service": { "service": service, "url": url, "primary": false } });
    let response = post_raw(stack, session, body.to_string()).await;
    assert_eq!(response.status(), 201, "adding {service} {url}");
    response.json().await.unwrap()
}

async fn get(stack: &TestStack, path: &str) -> reqwest::Response {
    stack.http.get(stack.url(path)).send().await.unwrap()
}

/// A discovery that must answer 200 with a JSON array.
async fn discovered(stack: &TestStack, path: &str) -> Vec<Value> {
    let response = get(stack, path).await;
    assert_eq!(response.status(), 200, "{path}");
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

async fn assert_no_content(response: reqwest::Response) {
    assert_eq!(response.status(), 204);
    assert!(response.headers().get("content-type").is_none());
    assert!(response.bytes().await.unwrap().is_empty());
}

fn service(name: &str, url: &str, primary: bool) -> Value {
    json!({ "service": name, "url": url, "primary": primary })
}

async fn delete(
    stack: &TestStack,
    session: &TestSession,
    query: &str,
    sensitive: Option<&str>,
) -> reqwest::Response {
    let mut request = stack
        .http
        .delete(stack.url(&format!("{SERVICES}{query}")))
        .bearer_auth(&session.token);
    if let Some(solution) = sensitive {
        request = request.header("X-P2-Sensitive-Solution", solution);
    }
    request.send().await.unwrap()
}

async fn put_primary(
    stack: &TestStack,
    session: &TestSession,
    body: Value,
    sensitive: Option<&str>,
) -> reqwest::Response {
    let mut request = stack
        .http
        .put(stack.url(PRIMARY))
        .bearer_auth(&session.token)
        .body(body.to_string());
    if let Some(solution) = sensitive {
        request = request.header("X-P2-Sensitive-Solution", solution);
    }
    request.send().await.unwrap()
}

fn enc(s: &str) -> String {
    s.replace(':', "%3A").replace('/', "%2F")
}

// ---------------------------------------------------------------------------------------------

async fn providers_are_added_in_every_body_shape_and_discovered(stack: TestStack) {
    let alice = register_and_login(&stack, "alice").await;
    // The OpenAPI wrapper; the first provider of a service becomes primary.
    let first = add(&stack, &alice, "chat", "https://Chat.Example.com").await;
    assert_eq!(first, service("chat", "https://chat.example.com", true));
    // A bare Service (older clients) with the SDK's `{"inner": name}`: answered as a string.
    let body =
        json!({ "service": { "inner": "chat" }, "url": "https://two.example/", "primary": false });
    let response = post_raw(&stack, &alice, body.to_string()).await;
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        service("chat", "https://two.example/", false)
    );
    // The wrapper around an `{"inner"}` name, with Content-Type this time.
    let response = stack
        .http
        .post(stack.url(SERVICES))
        .bearer_auth(&alice.token)
        .json(&json!({ "service": { "service": { "inner": "files" }, "url": "http://127.0.0.1:9000/base", "primary": true } }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        service("files", "http://127.0.0.1:9000/base", true)
    );

    let fid = &alice.fid;
    let all = discovered(&stack, &discover_path(fid, "")).await;
    assert_eq!(
        all,
        [
            service("chat", "https://chat.example.com", true),
            service("files", "http://127.0.0.1:9000/base", true),
            service("chat", "https://two.example/", false),
        ]
    );
    // Trailing slash, upper-case FID, percent-encoded '@': the same actor.
    let upper = format!("ALICE@{}", DOMAIN.to_uppercase());
    assert_eq!(discovered(&stack, &discover_path(&upper, "/")).await, all);
    let encoded = fid.replace('@', "%40");
    assert_eq!(discovered(&stack, &discover_path(&encoded, "")).await, all);

    // limit=1: the primary of each service; limit=2: two entries, primaries first.
    let primaries = discovered(&stack, &discover_path(fid, "?limit=1")).await;
    assert_eq!(primaries, all[..2]);
    assert_eq!(
        discovered(&stack, &discover_path(fid, "?limit=2")).await,
        all[..2]
    );
    assert_eq!(
        discovered(&stack, &discover_path(fid, "?limit=100")).await,
        all
    );
    // ... as a string, or in a GET body (older clients), where the query wins.
    let response = stack
        .http
        .get(stack.url(&discover_path(fid, "")))
        .body(r#"{"limit": "1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.json::<Vec<Value>>().await.unwrap(), primaries);
    let response = stack
        .http
        .get(stack.url(&discover_path(fid, "?limit=5")))
        .body(r#"{"limit": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.json::<Vec<Value>>().await.unwrap().len(), 3);

    // One service.
    let chat = discovered(&stack, &discover_path(fid, "/chat")).await;
    assert_eq!(
        chat,
        [
            service("chat", "https://chat.example.com", true),
            service("chat", "https://two.example/", false)
        ]
    );
    assert_eq!(
        discovered(&stack, &discover_path(fid, "/chat?limit=1")).await,
        chat[..1]
    );
    assert_eq!(
        discovered(&stack, &discover_path(fid, "/chat/")).await,
        chat
    );
    // A `name` in the body must match the path, in either spelling.
    for body in [
        r#"{"name": "chat"}"#,
        r#"{"name": {"inner": "chat"}, "limit": 1}"#,
    ] {
        let response = stack
            .http
            .get(stack.url(&discover_path(fid, "/chat")))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{body}");
    }
    let response = stack
        .http
        .get(stack.url(&discover_path(fid, "/chat")))
        .body(r#"{"name": "files"}"#)
        .send()
        .await
        .unwrap();
    expect_problem(response, 400).await;
}

async fn discovery_answers_204_when_empty_and_404_for_actors_not_registered_here(stack: TestStack) {
    let bob = register_and_login(&stack, "bob").await;
    assert_no_content(get(&stack, &discover_path(&bob.fid, "")).await).await;
    assert_no_content(get(&stack, &discover_path(&bob.fid, "?limit=1")).await).await;
    assert_no_content(get(&stack, &discover_path(&bob.fid, "/chat")).await).await;
    add(&stack, &bob, "chat", "https://chat.example").await;
    assert_no_content(get(&stack, &discover_path(&bob.fid, "/files")).await).await;

    for fid in [
        format!("nobody@{DOMAIN}"),
        "bob@elsewhere.example".to_owned(),
    ] {
        let detail = expect_problem(get(&stack, &discover_path(&fid, "")).await, 404).await;
        assert!(
            detail.contains("not") || detail.contains("no actor"),
            "{detail}"
        );
        expect_problem(get(&stack, &discover_path(&fid, "/chat")).await, 404).await;
    }
    for fid in [
        "bob",
        "bob@",
        "@p2.test",
        "b%20ob@p2.test",
        "bob@exa_mple.com",
        "a@b@c",
    ] {
        expect_problem(get(&stack, &discover_path(fid, "")).await, 400).await;
    }
    for name in ["Chat", "c", "chat.app", &"x".repeat(65)] {
        expect_problem(
            get(&stack, &discover_path(&bob.fid, &format!("/{name}"))).await,
            400,
        )
        .await;
    }
}

async fn discovery_rejects_bad_limits(stack: TestStack) {
    let carol = register_and_login(&stack, "carol").await;
    add(&stack, &carol, "chat", "https://chat.example").await;
    for rest in ["", "/chat"] {
        for query in [
            "?limit=0",
            "?limit=-1",
            "?limit=abc",
            "?limit=1.5",
            "?limit=",
            "?limit=0x10",
        ] {
            let path = discover_path(&carol.fid, &format!("{rest}{query}"));
            let detail = expect_problem(get(&stack, &path).await, 400).await;
            assert!(detail.contains("limit"), "{path}: {detail}");
        }
        for body in [
            r#"{"limit": 0}"#,
            r#"{"limit": -3}"#,
            r#"{"limit": "two"}"#,
            r#"{"limit": true}"#,
            r#"{"limit": 2.5}"#,
            "[1]",
            "{nope",
        ] {
            let response = stack
                .http
                .get(stack.url(&discover_path(&carol.fid, rest)))
                .body(body)
                .send()
                .await
                .unwrap();
            expect_problem(response, 400).await;
        }
    }
}

async fn adding_rejects_every_bad_input(stack: TestStack) {
    let dave = register_and_login(&stack, "dave").await;
    let long_url = format!("https://example.com/{}", "a".repeat(10_000));
    let bodies = [
        // Names (spec 8.2).
        json!({ "service": "Chat", "url": "https://chat.example", "primary": false }),
        json!({ "service": "c", "url": "https://chat.example", "primary": false }),
        json!({ "service": "x".repeat(65), "url": "https://chat.example", "primary": false }),
        json!({ "service": "chat.app", "url": "https://chat.example", "primary": false }),
        json!({ "service": "chat app", "url": "https://chat.example", "primary": false }),
        json!({ "service": "", "url": "https://chat.example", "primary": false }),
        json!({ "service": { "inner": "Bad!" }, "url": "https://chat.example" }),
        // URLs.
        json!({ "service": "chat", "url": "/relative/path", "primary": false }),
        json!({ "service": "chat", "url": "chat.example", "primary": false }),
        json!({ "service": "chat", "url": "javascript:alert(1)", "primary": false }),
        json!({ "service": "chat", "url": "javascript://chat.example/%0Aalert(1)" }),
        json!({ "service": "chat", "url": "data:text/html,<script>alert(1)</script>" }),
        json!({ "service": "chat", "url": "ftp://chat.example" }),
        json!({ "service": "chat", "url": "https://user:pw@chat.example" }),
        json!({ "service": "chat", "url": "https://chat.example/?q=1" }),
        json!({ "service": "chat", "url": "https://chat example" }),
        json!({ "service": "chat", "url": "" }),
        json!({ "service": "chat", "url": long_url, "primary": false }),
        // Shapes.
        json!({ "service": "chat", "url": "https://chat.example", "primary": false, "extra": 1 }),
        json!({ "service": { "service": "chat", "url": "https://chat.example", "primary": false }, "extra": 1 }),
        json!({ "service": { "service": "chat", "url": "https://chat.example", "owner": "x" } }),
        json!({ "service": "chat" }),
        json!({ "url": "https://chat.example" }),
        json!({ "service": 7, "url": "https://chat.example" }),
        json!({ "service": "chat", "url": ["https://chat.example"] }),
        json!({ "service": "chat", "url": "https://chat.example", "primary": "yes" }),
        json!([{ "service": "chat", "url": "https://chat.example" }]),
        json!("chat"),
    ];
    for body in bodies {
        let shown = body.to_string();
        let response = post_raw(&stack, &dave, shown.clone()).await;
        let detail = expect_problem(response, 400).await;
        assert!(!detail.is_empty(), "{shown:.80}");
    }
    for raw in ["", "{nope", "null"] {
        expect_problem(post_raw(&stack, &dave, raw.to_owned()).await, 400).await;
    }
    // Over the body limit.
    let huge =
        json!({ "service": "chat", "url": format!("https://e.example/{}", "a".repeat(70_000)) });
    expect_problem(post_raw(&stack, &dave, huge.to_string()).await, 413).await;
    // Nothing was stored.
    assert_no_content(get(&stack, &discover_path(&dave.fid, "")).await).await;

    // Without a (valid) token.
    let body = json!({ "service": "chat", "url": "https://chat.example" }).to_string();
    let response = stack
        .http
        .post(stack.url(SERVICES))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    expect_problem(response, 401).await;
    let response = stack
        .http
        .post(stack.url(SERVICES))
        .bearer_auth("not-a-token")
        .body(body)
        .send()
        .await
        .unwrap();
    expect_problem(response, 401).await;
    // Other methods are problems too.
    let response = stack.http.patch(stack.url(SERVICES)).send().await.unwrap();
    expect_problem(response, 405).await;
}

async fn duplicates_and_second_primaries_are_conflicts(stack: TestStack) {
    let erin = register_and_login(&stack, "erin").await;
    add(&stack, &erin, "chat", "https://chat.example").await;
    // The same provider, however it is spelled.
    for url in [
        "https://chat.example",
        "https://CHAT.example/",
        "HTTPS://chat.example//",
    ] {
        let body = json!({ "service": "chat", "url": url, "primary": false });
        expect_problem(post_raw(&stack, &erin, body.to_string()).await, 409).await;
    }
    // A second provider asking to be primary: only through PUT services/primary.
    let body = json!({ "service": "chat", "url": "https://other.example", "primary": true });
    let detail = expect_problem(post_raw(&stack, &erin, body.to_string()).await, 409).await;
    assert!(detail.contains("services/primary"), "{detail}");
    // Without `primary` it is added as a secondary.
    let body = json!({ "service": "chat", "url": "https://other.example" });
    let response = post_raw(&stack, &erin, body.to_string()).await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.json::<Value>().await.unwrap()["primary"], false);
    // Another actor may list the same provider.
    let frank = register_and_login(&stack, "frank").await;
    assert_eq!(
        add(&stack, &frank, "chat", "https://chat.example").await["primary"],
        true
    );
}

async fn removing_a_primary_is_sensitive_and_promotes_another(stack: TestStack) {
    let gina = register_and_login(&stack, "gina").await;
    add(&stack, &gina, "chat", "https://one.example").await;
    add(&stack, &gina, "chat", "https://two.example").await;
    add(&stack, &gina, "chat", "https://three.example").await;
    add(&stack, &gina, "files", "https://files.example").await;

    // A secondary: no second factor needed; nothing promoted.
    let response = delete(
        &stack,
        &gina,
        &format!("?url={}&name=chat", enc("https://three.example")),
        None,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!([]));

    // The primary: 403 without or with a wrong solution, and nothing changes.
    let query = format!("?url={}&name=chat", enc("https://one.example/"));
    let detail = expect_problem(delete(&stack, &gina, &query, None).await, 403).await;
    assert!(detail.contains("X-P2-Sensitive-Solution"), "{detail}");
    expect_problem(
        delete(&stack, &gina, &query, Some("wrong password")).await,
        403,
    )
    .await;
    assert_eq!(
        discovered(&stack, &discover_path(&gina.fid, "/chat"))
            .await
            .len(),
        2
    );

    let response = delete(&stack, &gina, &query, Some(&gina.password)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!([{ "service": "chat", "new_primary": "https://two.example", "newPrimary": "https://two.example" }])
    );
    assert_eq!(
        discovered(&stack, &discover_path(&gina.fid, "/chat")).await,
        [service("chat", "https://two.example", true)]
    );

    // Unknown providers: 404, and the request is all or nothing.
    let query = format!(
        "?url={},{}&name=chat,files",
        enc("https://nope.example"),
        enc("https://files.example")
    );
    expect_problem(
        delete(&stack, &gina, &query, Some(&gina.password)).await,
        404,
    )
    .await;
    assert_eq!(
        discovered(&stack, &discover_path(&gina.fid, ""))
            .await
            .len(),
        2
    );
    // Another actor cannot remove gina's providers.
    let hank = register_and_login(&stack, "hank").await;
    let query = format!("?url={}&name=files", enc("https://files.example"));
    expect_problem(
        delete(&stack, &hank, &query, Some(&hank.password)).await,
        404,
    )
    .await;

    // Bad requests.
    for query in [
        String::new(),
        "?name=chat".to_owned(),
        format!("?url={}", enc("https://two.example")),
        format!("?url={}&name=chat,files", enc("https://two.example")),
        format!("?url={}&name=Chat", enc("https://two.example")),
        "?url=javascript:alert(1)&name=chat".to_owned(),
        format!("?url={}&name=chat&force=true", enc("https://two.example")),
    ] {
        expect_problem(
            delete(&stack, &gina, &query, Some(&gina.password)).await,
            400,
        )
        .await;
    }
    let response = stack
        .http
        .delete(stack.url(SERVICES))
        .body(r#"{"url": "https://two.example", "name": "chat", "extra": true}"#)
        .bearer_auth(&gina.token)
        .send()
        .await
        .unwrap();
    expect_problem(response, 400).await;
    expect_problem(
        stack
            .http
            .delete(stack.url(&format!("{SERVICES}?url=x&name=chat")))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;

    // Several at once, in a JSON body (both primaries: sensitive).
    let response = stack
        .http
        .delete(stack.url(SERVICES))
        .bearer_auth(&gina.token)
        .header("X-P2-Sensitive-Solution", &gina.password)
        .body(r#"{"url": ["https://two.example", "https://files.example"], "name": ["chat", {"inner": "files"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!([]));
    assert_no_content(get(&stack, &discover_path(&gina.fid, "")).await).await;
}

async fn changing_the_primary_is_a_sensitive_action(stack: TestStack) {
    let ivy = register_and_login(&stack, "ivy").await;
    add(&stack, &ivy, "chat", "https://one.example").await;
    add(&stack, &ivy, "chat", "https://two.example").await;
    let body = json!({ "url": "https://two.example", "name": "chat" });

    expect_problem(put_primary(&stack, &ivy, body.clone(), None).await, 403).await;
    expect_problem(
        put_primary(&stack, &ivy, body.clone(), Some("nope")).await,
        403,
    )
    .await;
    assert_eq!(
        discovered(&stack, &discover_path(&ivy.fid, "/chat?limit=1")).await,
        [service("chat", "https://one.example", true)]
    );

    // The SDK's body: `{"inner": name}`.
    let sdk_body = json!({ "url": "https://two.example/", "name": { "inner": "chat" } });
    let response = put_primary(&stack, &ivy, sdk_body, Some(&ivy.password)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!([
            service("chat", "https://two.example", true),
            service("chat", "https://one.example", false)
        ])
    );
    assert_eq!(
        discovered(&stack, &discover_path(&ivy.fid, "/chat?limit=1")).await,
        [service("chat", "https://two.example", true)]
    );
    // Already the primary: one entry.
    let response = put_primary(&stack, &ivy, body, Some(&ivy.password)).await;
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!([service("chat", "https://two.example", true)])
    );

    let unknown = json!({ "url": "https://three.example", "name": "chat" });
    expect_problem(
        put_primary(&stack, &ivy, unknown, Some(&ivy.password)).await,
        404,
    )
    .await;
    let unknown = json!({ "url": "https://two.example", "name": "files" });
    expect_problem(
        put_primary(&stack, &ivy, unknown, Some(&ivy.password)).await,
        404,
    )
    .await;
    for bad in [
        json!({ "url": "https://two.example" }),
        json!({ "name": "chat" }),
        json!({ "url": "https://two.example", "name": "Chat" }),
        json!({ "url": "javascript:alert(1)", "name": "chat" }),
        json!({ "url": "/two", "name": "chat" }),
        json!({ "url": "https://two.example", "name": "chat", "primary": true }),
        json!(["chat"]),
    ] {
        expect_problem(
            put_primary(&stack, &ivy, bad, Some(&ivy.password)).await,
            400,
        )
        .await;
    }
}

const RACERS: usize = 10;

async fn concurrent_requests_never_make_two_primaries(stack: TestStack) {
    let jo = register_and_login(&stack, "jo").await;
    let post = |body: Value| {
        stack
            .http
            .post(stack.url(SERVICES))
            .bearer_auth(&jo.token)
            .body(body.to_string())
    };
    async fn race(requests: Vec<reqwest::RequestBuilder>) -> Vec<(u16, Value)> {
        let mut tasks = tokio::task::JoinSet::new();
        for request in requests {
            tasks.spawn(async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap())
            });
        }
        let mut answers = Vec::new();
        while let Some(answer) = tasks.join_next().await {
            answers.push(answer.unwrap());
        }
        answers
    }

    // Many first providers of one new service at once: exactly one becomes primary.
    let answers = race(
        (0..RACERS)
            .map(|i| post(json!({ "service": "chat", "url": format!("https://p{i}.example") })))
            .collect(),
    )
    .await;
    assert!(
        answers.iter().all(|(status, _)| *status == 201),
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|(_, s)| s["primary"] == true).count(),
        1
    );

    // Many asking to be primary of another new service: one wins, the others get 409.
    let answers = race(
        (0..RACERS)
            .map(|i| {
                post(json!({ "service": "files", "url": format!("https://f{i}.example"), "primary": true }))
            })
            .collect(),
    )
    .await;
    let mut statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses[0], 201, "{answers:?}");
    assert!(statuses[1..].iter().all(|s| *s == 409), "{answers:?}");

    // Concurrent primary changes: every one succeeds, one primary remains.
    let answers = race(
        (0..RACERS)
            .map(|i| {
                stack
                    .http
                    .put(stack.url(PRIMARY))
                    .bearer_auth(&jo.token)
                    .header("X-P2-Sensitive-Solution", &jo.password)
                    .body(
                        json!({ "url": format!("https://p{i}.example"), "name": "chat" })
                            .to_string(),
                    )
            })
            .collect(),
    )
    .await;
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    let chat = discovered(&stack, &discover_path(&jo.fid, "/chat")).await;
    assert_eq!(chat.len(), RACERS);
    assert_eq!(chat.iter().filter(|s| s["primary"] == true).count(), 1);
    assert_eq!(
        discovered(&stack, &discover_path(&jo.fid, "?limit=1"))
            .await
            .len(),
        2
    );
}

async fn the_sdks_requests_are_accepted_and_its_parsers_read_our_answers(stack: TestStack) {
    let kim = register_and_login(&stack, "kim").await;
    let base = Url::parse(&stack.base).unwrap();
    let client = HttpClient::new().unwrap();
    let session = Session::<SdkSig, SdkPriv>::new(&client, &kim.token, base.clone(), None);
    let fid = FederationId::new(&kim.fid).unwrap();
    let chat = ServiceName::new("chat").unwrap();

    // Nothing yet: the SDK reads our 204 as an empty list.
    assert!(
        client
            .discover_services(&fid, None, &base)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        client
            .discover_service(&fid, &chat, Some(1), &base)
            .await
            .unwrap()
            .is_empty()
    );

    // The SDK's add: `{"service": Service}` with `{"inner": name}`, no Content-Type, `url::Url`
    // (trailing slash). We accept it (201) and answer the spec's plain-string name, which the
    // SDK's `ServiceName` newtype cannot read (API.md "Wire dialect": we do not follow its
    // newtype leak), so the SDK reports a deserialization error after the status check passed.
    let one = Url::parse("https://one.example").unwrap();
    let two = Url::parse("https://two.example/base").unwrap();
    for url in [&one, &two] {
        let added = session
            .add_discoverable_service(&Service::new("chat", url.clone(), false).unwrap())
            .await;
        assert!(
            matches!(added, Err(RequestError::DeserializationError(_))),
            "{added:?}"
        );
    }
    let listed = discovered(&stack, &discover_path(&kim.fid, "/chat")).await;
    assert_eq!(
        listed,
        [
            service("chat", "https://one.example/", true),
            service("chat", "https://two.example/base", false)
        ]
    );
    // A second add of the same provider: the SDK sees our 409.
    let again = session
        .add_discoverable_service(&Service::new("chat", one.clone(), false).unwrap())
        .await;
    assert!(
        matches!(&again, Err(RequestError::StatusCode { received, .. }) if received.as_u16() == 409),
        "{again:?}"
    );

    // The SDK's discover (query `limit`): accepted, same plain-string answer.
    let found = client.discover_services(&fid, Some(1), &base).await;
    assert!(
        matches!(found, Err(RequestError::DeserializationError(_))),
        "{found:?}"
    );

    // The SDK's primary change (`{"url", "name": {"inner"}}` + sensitive header): accepted.
    let changed = session
        .set_primary_service_provider(&two, &chat, &kim.password)
        .await;
    assert!(
        matches!(changed, Err(RequestError::DeserializationError(_))),
        "{changed:?}"
    );
    assert_eq!(
        discovered(&stack, &discover_path(&kim.fid, "/chat?limit=1")).await,
        [service("chat", "https://two.example/base", true)]
    );
    let refused = session
        .set_primary_service_provider(&one, &chat, "wrong")
        .await;
    assert!(
        matches!(&refused, Err(RequestError::StatusCode { received, .. }) if received.as_u16() == 403),
        "{refused:?}"
    );

    // The SDK's delete (query `url` + `name`): its parser reads our promotions.
    let without_solution = session.delete_discoverable_service(&two, &chat, None).await;
    assert!(
        matches!(&without_solution, Err(RequestError::StatusCode { received, .. }) if received.as_u16() == 403),
        "{without_solution:?}"
    );
    let promoted: Vec<ServiceDeleteResponse> = session
        .delete_discoverable_service(&two, &chat, Some(&kim.password))
        .await
        .unwrap();
    assert_eq!(promoted.len(), 1);
    assert_eq!(promoted[0].service, "chat");
    assert_eq!(promoted[0].new_primary, one);
    let removed = session
        .delete_discoverable_service(&one, &chat, Some(&kim.password))
        .await
        .unwrap();
    assert!(removed.is_empty());
    assert!(
        client
            .discover_services(&fid, None, &base)
            .await
            .unwrap()
            .is_empty()
    );
}

on_both_backends!(
    providers_are_added_in_every_body_shape_and_discovered,
    discovery_answers_204_when_empty_and_404_for_actors_not_registered_here,
    discovery_rejects_bad_limits,
    adding_rejects_every_bad_input,
    duplicates_and_second_primaries_are_conflicts,
    removing_a_primary_is_sensitive_and_promotes_another,
    changing_the_primary_is_a_sensitive_action,
    concurrent_requests_never_make_two_primaries,
    the_sdks_requests_are_accepted_and_its_parsers_read_our_answers,
);
