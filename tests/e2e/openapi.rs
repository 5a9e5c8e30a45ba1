//! The OpenAPI document against the running stack: the gateway serves the committed
//! `docs/openapi.json` byte for byte, and schemathesis (`P2_SCHEMATHESIS`, installed by
//! `scripts/test.sh`) fuzzes every operation it describes with a real session's token, checking
//! that no answer is a server error and that every status, content type, header and body is
//! the one the document describes.
//!
//! `DELETE /.p2/core/v1/session` ends the session whose token it is sent with, so it runs in a
//! phase of its own, last, with a second session's token; a third session checks a deletion
//! by hand. Password guesses (wrong `X-P2-Sensitive-Solution`s) get the account and the
//! loopback address throttled (429, documented), so every login happens before the fuzzing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::{
    DOMAIN, TestSession, TestStack, expect_problem, login, own_gateway, register_and_login,
};

/// Examples per operation and phase: enough to reach every documented answer the fuzzer can
/// provoke, few enough to stay well under two minutes on two cores.
const MAX_EXAMPLES: &str = "50";
/// A fixed seed: the same requests on every run (with the pinned schemathesis release).
const SEED: &str = "20260101";
/// What every answer is checked for.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
    response_headers_conformance,response_schema_conformance,negative_data_rejection,\
    missing_required_header,unsupported_method,allow_header_conformance,ignored_auth,\
    use_after_free,ensure_resource_availability";

/// The schemathesis executable, or a panic saying how to get one.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("P2_SCHEMATHESIS")
        .map(PathBuf::from)
        .expect(
            "P2_SCHEMATHESIS is not set: run the tests through scripts/test.sh, which installs \
         schemathesis into a virtualenv and exports it",
        );
    let executable = std::fs::metadata(&path).is_ok_and(|m| {
        use std::os::unix::fs::PermissionsExt as _;
        m.is_file() && m.permissions().mode() & 0o111 != 0
    });
    assert!(
        executable,
        "P2_SCHEMATHESIS={} is not an executable file: run the tests through scripts/test.sh",
        path.display()
    );
    path
}

/// The schemathesis configuration: half of the generated FIDs, service names, session IDs
/// and provider URLs are real ones, so the fuzzer reaches the success answers too.
fn config(fid: &str) -> String {
    format!(
        r#"
[dictionaries]
fids = {{ values = ["{fid}", "nobody@{DOMAIN}"] }}
services = {{ values = ["polyproto-chat", "files"] }}
urls = {{ values = ["https://chat.example.com/", "https://files.example.com/"] }}
sessions = {{ values = ["s1", "s2", "s3", "nope"] }}

[parameters]
"path.fid" = {{ dictionary = "fids", probability = 0.5 }}
"path.service" = {{ dictionary = "services", probability = 0.5 }}
"query.session_id" = {{ dictionary = "sessions", probability = 0.5 }}
"body.service.service" = {{ dictionary = "services", probability = 0.5 }}
"body.service.url" = {{ dictionary = "urls", probability = 0.5 }}
"body.name" = {{ dictionary = "services", probability = 0.5 }}
"body.url" = {{ dictionary = "urls", probability = 0.5 }}
"query.url" = {{ dictionary = "urls", probability = 0.5 }}
"query.name" = {{ dictionary = "services", probability = 0.5 }}
"#
    )
}

/// One schemathesis run over `base`'s document with `token`; `filter` selects operations.
/// Returns the operations it tested (from its JUnit report) and its count of test cases.
async fn run(
    base: &str,
    token: &str,
    config_file: &Path,
    work: &Path,
    phase: &str,
    filter: &[&str],
) -> (Vec<String>, String) {
    let report = work.join(format!("{phase}.xml"));
    let mut command = Command::new(schemathesis());
    command
        .arg("--config-file")
        .arg(config_file)
        .arg("run")
        .arg(format!("{base}/.p2/core/v1/openapi.json"))
        .args(["--url", base])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", CHECKS])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", SEED])
        .args(["--workers", "1"])
        .args(["--request-timeout", "20"])
        .args(["--generation-database", "none"])
        .args(["--no-color", "--report", "junit"])
        .arg("--report-junit-path")
        .arg(&report)
        .args(filter)
        // Its caches and reports stay in the test's own directory.
        .current_dir(work)
        .env("HOME", work);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("schemathesis could not be started");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("--- schemathesis, phase {phase} ---\n{text}");
    assert!(
        output.status.success(),
        "schemathesis found answers that contradict docs/openapi.json (phase {phase}, exit \
         {:?}); its report:\n{text}",
        output.status.code()
    );
    let junit = std::fs::read_to_string(&report).expect("schemathesis wrote no JUnit report");
    let operations = junit
        .split("<testcase name=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect();
    let cases = text
        .lines()
        .skip_while(|line| !line.starts_with("Test cases:"))
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned();
    (operations, cases)
}

/// Every operation of the served document, as `METHOD /path`.
fn operations(document: &serde_json::Value) -> Vec<String> {
    let mut all = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            all.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    all.sort();
    all
}

async fn the_openapi_document_describes_what_the_stack_answers(stack: TestStack) {
    // The committed document is what is served, as JSON.
    let response = stack
        .http
        .get(stack.url("/.p2/core/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served = response.text().await.unwrap();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    assert!(
        served == committed,
        "the served document is not docs/openapi.json: regenerate it with \
         `P2_UPDATE_OPENAPI=1 cargo test -p p2-gateway openapi`"
    );
    let document: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert_eq!(document["openapi"], "3.1.0");

    // Every login first: the fuzzer's wrong passwords get this address throttled.
    let alice = register_and_login(&stack, "alice").await;
    let second: TestSession = login(&stack, "alice", "s2").await;
    let third: TestSession = login(&stack, "alice", "s3").await;
    let provider = stack
        .http
        .post(stack.url("/.p2/core/v1/services"))
        .bearer_auth(&alice.token)
        .json(&serde_json::json!({"service": {"service": "polyproto-chat",
            "url": "https://chat.example.com/", "primary": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(provider.status(), 201);

    // A gateway of our own without rate limits: the fuzzer sends far more than a client may.
    let mut options = p2_gateway::GatewayOptions::default();
    options.rate_limits.public = 0;
    options.rate_limits.bearer = 0;
    options.rate_limits.password = 0;
    let (_state, base) = own_gateway(&stack, options, None).await;

    let work = tempfile::tempdir().unwrap();
    let config_file = work.path().join("schemathesis.toml");
    std::fs::write(&config_file, config(&alice.fid)).unwrap();

    let started = std::time::Instant::now();
    let (tested, summary) = run(
        &base,
        &alice.token,
        &config_file,
        work.path(),
        "all-but-session-deletion",
        &["--exclude-operation-id", "deleteSession"],
    )
    .await;
    let (tested_last, summary_last) = run(
        &base,
        &second.token,
        &config_file,
        work.path(),
        "session-deletion",
        &["--include-operation-id", "deleteSession"],
    )
    .await;
    println!(
        "schemathesis took {:.0?}: {} operations, {summary}; session deletion: {summary_last}",
        started.elapsed(),
        tested.len() + tested_last.len(),
    );

    // Every operation was fuzzed, except the one that serves the document (schemathesis skips
    // the operation its schema came from; the checks above cover it).
    let mut fuzzed: Vec<String> = tested.into_iter().chain(tested_last).collect();
    fuzzed.sort();
    fuzzed.dedup();
    let expected: Vec<String> = operations(&document)
        .into_iter()
        .filter(|op| op != "GET /.p2/core/v1/openapi.json")
        .collect();
    assert_eq!(
        fuzzed, expected,
        "schemathesis did not test every operation"
    );

    // The deletion by hand: 204 without a body, and the token is dead at once (401).
    let response = stack
        .http
        .delete(format!("{base}/.p2/core/v1/session"))
        .bearer_auth(&third.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert!(response.bytes().await.unwrap().is_empty());
    let response = stack
        .http
        .get(format!("{base}/.p2/core/v1/challenge"))
        .bearer_auth(&third.token)
        .send()
        .await
        .unwrap();
    expect_problem(response, 401).await;
}

crate::on_both_backends!(the_openapi_document_describes_what_the_stack_answers);
