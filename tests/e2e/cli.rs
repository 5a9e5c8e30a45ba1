//! The `polyproto` binary as users run it.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_polyproto");

/// Kills the child when the test ends, whatever happens.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_prints_its_url_once_every_route_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Child(
        Command::new(BIN)
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--domain",
                "cli.test",
                "--data-dir",
            ])
            .arg(dir.path())
            .env("P2_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"),
        "{url}"
    );
    // Immediately usable: no retry loop.
    let body: serde_json::Value = reqwest::get(format!("{url}/.well-known/polyproto-core"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["api"], format!("{url}/.p2/core/"));
    let pem = reqwest::get(format!("{url}/.p2/core/v1/idcert/server"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(pem.contains("idCertPem"));
    // The key encryption key was generated with mode 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(dir.path().join("key-encryption.key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}

/// An internal key for the processes these tests start alone.
const INTERNAL_KEY: &str = "7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a";

fn run_to_exit(args: &[&str]) -> (bool, String) {
    run_to_exit_with(args, Some(INTERNAL_KEY))
}

fn run_to_exit_with(args: &[&str], internal_key: Option<&str>) -> (bool, String) {
    let mut command = Command::new(BIN);
    command.env_remove("P2_INTERNAL_KEY");
    if let Some(key) = internal_key {
        command.env("P2_INTERNAL_KEY", key);
    }
    let mut child = command
        .args(args)
        .env("P2_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return (status.success(), stderr);
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("{args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_one_clear_error_line(stderr: &str, must_contain: &str, secret: &str) {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one error line expected:\n{stderr}"
    );
    assert!(errors[0].contains(must_contain), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
    assert!(!stderr.contains(secret), "leaked a secret:\n{stderr}");
}

#[test]
fn an_unreachable_database_stops_start_up_with_one_clear_line() {
    let (ok, stderr) = run_to_exit(&[
        "identity",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        "postgres://p2:hunter2@127.0.0.1:1/identity",
        "--key-encryption-key",
        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
    ]);
    assert!(!ok, "must exit non-zero");
    assert_one_clear_error_line(
        &stderr,
        "identity database at postgres://p2:***@127.0.0.1:1/identity",
        "hunter2",
    );
}

#[test]
fn an_unreachable_redis_stops_start_up_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("session.db").display());
    let (ok, stderr) = run_to_exit(&[
        "session",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &db,
        "--redis-url",
        "redis://:opensesame@127.0.0.1:1/",
    ]);
    assert!(!ok, "must exit non-zero");
    assert_one_clear_error_line(&stderr, "session Redis at redis://", "opensesame");
}

#[test]
fn a_service_without_the_internal_key_refuses_to_start_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    for (component, db) in [
        ("identity", Some("identity.db")),
        ("session", Some("session.db")),
        ("discovery", Some("discovery.db")),
        ("events", None),
        ("gateway", None),
    ] {
        let mut args = vec![component, "--listen", "127.0.0.1:0"];
        let url;
        if let Some(db) = db {
            url = format!("sqlite://{}", dir.path().join(db).display());
            args.extend(["--database-url", url.as_str()]);
        }
        if component == "identity" {
            args.extend([
                "--key-encryption-key",
                "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
            ]);
        }
        let (ok, stderr) = run_to_exit_with(&args, None);
        assert!(!ok, "{component} started without an internal key");
        assert_one_clear_error_line(&stderr, "P2_INTERNAL_KEY", "\u{0}");
    }
}

#[test]
fn a_missing_key_encryption_key_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("identity.db").display());
    let (ok, stderr) = run_to_exit(&["identity", "--listen", "127.0.0.1:0", "--database-url", &db]);
    assert!(!ok);
    assert_one_clear_error_line(&stderr, "P2_KEY_ENCRYPTION_KEY", "\u{0}");
}

fn run_with_stdin(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    use std::io::Write as _;
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("P2_LOG", "warn")
        .env_remove("P2_ADMIN_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn admin_commands_create_actors_and_rotate_keys_in_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // Password on stdin.
    let (ok, stdout, stderr) = run_with_stdin(
        &[
            "admin",
            "create-actor",
            "Root",
            "--admin",
            "--data-dir",
            data,
            "--domain",
            "cli.test",
        ],
        "a long admin password\n",
        &[],
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "root@cli.test");
    // Password from P2_ADMIN_PASSWORD; a taken name is refused with a clear line.
    let (ok, stdout, _) = run_with_stdin(
        &[
            "admin",
            "create-actor",
            "bob",
            "--data-dir",
            data,
            "--domain",
            "cli.test",
        ],
        "",
        &[("P2_ADMIN_PASSWORD", "another long password")],
    );
    assert!(ok);
    assert_eq!(stdout.trim(), "bob@cli.test");
    let (ok, _, stderr) = run_with_stdin(
        &[
            "admin",
            "create-actor",
            "bob",
            "--data-dir",
            data,
            "--domain",
            "cli.test",
        ],
        "another long password\n",
        &[],
    );
    assert!(!ok);
    assert_one_clear_error_line(&stderr, "already taken", "another long password");
    // No password at all.
    let (ok, _, stderr) = run_with_stdin(
        &[
            "admin",
            "create-actor",
            "carol",
            "--data-dir",
            data,
            "--domain",
            "cli.test",
        ],
        "",
        &[],
    );
    assert!(!ok);
    assert_one_clear_error_line(&stderr, "P2_ADMIN_PASSWORD", "\u{0}");
    // Rotation prints the new root cert, different from the first one.
    let (ok, first, _) = run_with_stdin(
        &[
            "admin",
            "rotate-key",
            "--data-dir",
            data,
            "--domain",
            "cli.test",
        ],
        "",
        &[],
    );
    assert!(ok);
    let (ok, second, _) = run_with_stdin(
        &[
            "admin",
            "rotate-key",
            "--data-dir",
            data,
            "--domain",
            "cli.test",
        ],
        "",
        &[],
    );
    assert!(ok);
    assert!(first.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_ne!(first, second);
    let cert = p2_model::IdCert::from_pem(&second).unwrap();
    p2_model::verify_root_cert(&cert, "cli.test", None).unwrap();
    // The data directory belongs to cli.test: another domain is refused.
    let (ok, _, stderr) = run_with_stdin(
        &[
            "admin",
            "rotate-key",
            "--data-dir",
            data,
            "--domain",
            "other.test",
        ],
        "",
        &[],
    );
    assert!(!ok);
    assert_one_clear_error_line(&stderr, "cli.test", "\u{0}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The deployment shape of compose and Kubernetes: every component its own process, meeting
/// over gRPC. The services share the internal key; the gateway holds only its own credential
/// (as `polyproto internal-credential gateway` prints it), and a login works end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_with_a_gateway_holding_only_its_credential_serve_a_login() {
    use crate::split::{Component, SplitStack};
    // Every component its own process; the gateway holds only its credential (the default of
    // the harness) and the stack is ready once the gateway and every upstream answer.
    let stack = SplitStack::builder().domain("split.test").start().await;
    let credential = Command::new(BIN)
        .args(["internal-credential", "gateway"])
        .env("P2_INTERNAL_KEY", stack.internal_key())
        .output()
        .unwrap();
    assert!(credential.status.success());
    let credential = String::from_utf8(credential.stdout)
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(credential.len(), 64);
    assert_ne!(credential, stack.internal_key());
    assert_eq!(credential, stack.gateway_credential());

    let base = stack.base();
    let http = stack.http();
    let token = &crate::split::register_and_login(http, &base, "split.test", "alice", "s1").await;
    let challenge = http
        .get(format!("{base}/.p2/core/v1/challenge"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(challenge.status(), 200);
    // A gateway with a made-up credential gets nowhere: the services refuse it.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let liar_credential = "ab".repeat(32);
    let session_url = stack.grpc_url(Component::Session, 0);
    let _liar = stack.spawn_extra(
        Component::Gateway,
        &["--listen", &listen, "--session-url", &session_url],
        &[("P2_COMPONENT_CREDENTIAL", &liar_credential)],
    );
    let start = Instant::now();
    let refused = loop {
        if let Ok(response) = http
            .get(format!("http://127.0.0.1:{port}/.p2/core/v1/challenge"))
            .bearer_auth(token)
            .send()
            .await
        {
            break response;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the second gateway never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The session service refuses it; the gateway reports its own misconfiguration as a 500
    // (the client's token is fine) without details.
    assert_eq!(
        refused.status(),
        500,
        "the session service must refuse a foreign credential"
    );
}

/// `polyproto healthcheck`: 0 for a ready gateway (`/readyz`) and a serving gRPC service, 1
/// with one clear line for a port nobody serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_tells_ready_components_from_absent_ones() {
    let stack = crate::helpers::spawn_stack(crate::helpers::Backend::Sqlite).await;
    let running = stack.stack.as_ref().unwrap();
    let gateway = format!("{}/readyz", stack.base);
    let identity = running.grpc_addrs[0].to_string();
    let absent = format!("127.0.0.1:{}", free_port());
    let (gateway_ok, identity_ok, absent_result) = tokio::task::spawn_blocking(move || {
        let run = |target: &str| {
            let out = Command::new(BIN)
                .args(["healthcheck", target])
                .env("P2_LOG", "warn")
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        (run(&gateway).0, run(&identity).0, run(&absent))
    })
    .await
    .unwrap();
    assert!(gateway_ok, "the gateway's /readyz must pass");
    assert!(identity_ok, "the identity service's gRPC health must pass");
    assert!(!absent_result.0, "nothing listens there");
    assert_one_clear_error_line(&absent_result.1, "cannot connect", "\u{0}");
}

/// Every `P2_*` variable the binaries read (clap `env = "..."` and direct reads, found in the
/// sources) is documented in `.env.example` and in the Kubernetes ConfigMap/Secret examples.
#[test]
fn every_variable_the_binaries_read_is_in_the_examples() {
    fn sources(dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("tests") {
                    sources(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut texts = Vec::new();
    for dir in ["src", "gateway/src", "services"] {
        sources(&root.join(dir), &mut texts);
    }
    let mut variables = std::collections::BTreeSet::new();
    for text in &texts {
        for marker in ["env = \"", "env::var(\""] {
            for piece in text.split(marker).skip(1) {
                let name: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if name.starts_with("P2_") && !name.starts_with("P2_TEST_") {
                    variables.insert(name);
                }
            }
        }
    }
    assert!(variables.len() > 40, "found only {variables:?}");
    let env_example = std::fs::read_to_string(root.join(".env.example")).unwrap();
    let k8s = ["config.example.yaml", "secret.example.yaml"]
        .map(|f| std::fs::read_to_string(root.join("deploy/k8s").join(f)).unwrap())
        .join("\n");
    let missing_env: Vec<_> = variables
        .iter()
        .filter(|v| !env_example.contains(*v))
        .collect();
    let missing_k8s: Vec<_> = variables.iter().filter(|v| !k8s.contains(*v)).collect();
    assert!(missing_env.is_empty(), ".env.example lacks {missing_env:?}");
    assert!(
        missing_k8s.is_empty(),
        "the Kubernetes examples lack {missing_k8s:?}"
    );
}
