//! Day-2 operations as deploy/README.md describes them: a backup (database dumps, or a copy of
//! the data directory) restored into wiped storage serves the same root cert and actor certs,
//! and rotating the key encryption key re-encrypts every server key so the server starts with
//! the new key (and no longer with the old one).

use std::path::Path;
use std::process::Command;

use polyproto_server::admin::{self, NewKey};
use polyproto_server::stack::{self, Storage};

use crate::helpers::{self, Backend, TestStack};

const NEW_KEK: &str = "7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b";

/// What a client sees of the server's identity: the root cert and an actor's certs.
async fn identity_view(stack: &TestStack, fid: &str) -> (String, String) {
    let server = stack
        .http
        .get(stack.url("/.p2/core/v1/idcert/server"))
        .send()
        .await
        .unwrap();
    assert_eq!(server.status(), 200);
    let actor = stack
        .http
        .get(stack.url(&format!("/.p2/core/v1/idcert/actor/{fid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(actor.status(), 200);
    let actor = actor.text().await.unwrap();
    assert!(actor.contains("BEGIN CERTIFICATE"), "{actor}");
    (server.text().await.unwrap(), actor)
}

/// Starts a stack on `storage` whose identity service uses `kek` (`None`: the data directory's
/// key file).
async fn start(storage: Storage, kek: Option<&str>) -> anyhow::Result<TestStack> {
    let mut config = helpers::stack_config(storage.clone());
    config.identity.key_encryption_key = kek.map(|k| k.to_owned().into());
    let stack = stack::start(config).await?;
    Ok(TestStack {
        base: format!("http://{}", stack.addr),
        stack: Some(stack),
        http: reqwest::Client::new(),
        storage,
        _dir: None,
    })
}

async fn stop(mut stack: TestStack) {
    stack.stack.take().unwrap().stop().await.unwrap();
}

fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Drops a database for good (what a lost server leaves).
async fn drop_database(url: &str) {
    let (server, name) = url.rsplit_once('/').unwrap();
    let admin = sqlx::AnyPool::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    // The name comes from our own fresh_postgres_database (letters, digits, underscores).
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{name}\" WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

/// PostgreSQL: `pg_dump -Fc` of the three databases, the databases dropped, `pg_restore` into
/// new empty ones, the server started on those with the same key encryption key: the same root
/// cert, the same actor certs, the old password and token still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_dump_restored_into_new_databases_serves_the_same_certs() {
    sqlx::any::install_default_drivers();
    let stack = helpers::spawn_stack(Backend::Postgres).await;
    let session = helpers::register_and_login(&stack, "alice").await;
    let fid = format!("alice@{}", helpers::DOMAIN);
    let before = identity_view(&stack, &fid).await;
    let Storage::External {
        identity_database_url,
        session_database_url,
        discovery_database_url,
        redis_url,
    } = stack.storage.clone()
    else {
        unreachable!()
    };
    stop(stack).await;

    let dir = tempfile::tempdir().unwrap();
    let mut restored = Vec::new();
    for (label, url) in [
        ("identity", &identity_database_url),
        ("session", &session_database_url),
        ("discovery", &discovery_database_url),
    ] {
        let dump = dir.path().join(format!("{label}.dump"));
        run(Command::new("pg_dump")
            .args(["-Fc", "--no-owner", "-f"])
            .arg(&dump)
            .arg(url));
        drop_database(url).await;
        let target = helpers::fresh_postgres_database(&format!("restored_{label}")).await;
        run(Command::new("pg_restore")
            .args(["--no-owner", "--exit-on-error", "-d"])
            .arg(&target)
            .arg(&dump));
        restored.push(target);
    }
    let storage = Storage::External {
        identity_database_url: restored[0].clone(),
        session_database_url: restored[1].clone(),
        discovery_database_url: restored[2].clone(),
        redis_url,
    };
    let stack = start(storage, Some(helpers::TEST_KEK)).await.unwrap();
    assert_eq!(identity_view(&stack, &fid).await, before);
    // Sessions came back too: the old token is accepted; the password still logs in.
    let challenge = stack
        .http
        .get(stack.url("/.p2/core/v1/challenge"))
        .bearer_auth(&session.token)
        .send()
        .await
        .unwrap();
    assert_eq!(challenge.status(), 200);
    helpers::login(&stack, "alice", "after-restore").await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// `polyproto up`: the stopped data directory copied elsewhere, the original deleted, the copy
/// serves the same certs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_data_directory_serves_the_same_certs() {
    let stack = helpers::spawn_stack(Backend::Sqlite).await;
    helpers::register_and_login(&stack, "bob").await;
    let fid = format!("bob@{}", helpers::DOMAIN);
    let before = identity_view(&stack, &fid).await;
    let Storage::Embedded { data_dir } = stack.storage.clone() else {
        unreachable!()
    };
    let mut stack = stack;
    let original_dir = stack._dir.take();
    stop(stack).await;
    let backup = tempfile::tempdir().unwrap();
    copy_dir(&data_dir, backup.path());
    drop(original_dir);
    assert!(!data_dir.exists(), "the original is gone");
    let stack = start(
        Storage::Embedded {
            data_dir: backup.path().to_owned(),
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(identity_view(&stack, &fid).await, before);
}

/// `admin rotate-key-encryption-key` on PostgreSQL: every generation re-encrypted in one go;
/// the server then starts with the new key and serves the same certs, and refuses the old key
/// with a clear error; a second run changes nothing; a wrong current key changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_key_encryption_key_re_encrypts_every_server_key() {
    let stack = helpers::spawn_stack(Backend::Postgres).await;
    helpers::register_and_login(&stack, "carol").await;
    let storage = helpers::admin_storage(&stack);
    let external = stack.storage.clone();
    stop(stack).await;
    // Two generations: the rotation must cover old keys too.
    admin::rotate_key(&storage).await.unwrap();
    let stack = start(external.clone(), Some(helpers::TEST_KEK))
        .await
        .unwrap();
    let fid = format!("carol@{}", helpers::DOMAIN);
    let before = identity_view(&stack, &fid).await;
    stop(stack).await;

    // A wrong current key: refused, nothing written.
    let mut wrong = storage.clone();
    wrong.key_encryption_key = Some("11".repeat(32).into());
    let error = admin::rotate_key_encryption_key(&wrong, NewKey::Hex(NEW_KEK.to_owned().into()))
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("opens with neither"),
        "{error:#}"
    );
    // A new key is required outside a data directory.
    let error = admin::rotate_key_encryption_key(&storage, NewKey::Generate)
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("no new key"), "{error:#}");

    let done = admin::rotate_key_encryption_key(&storage, NewKey::Hex(NEW_KEK.to_owned().into()))
        .await
        .unwrap();
    assert_eq!((done.changed, done.already), (2, 0));
    // Again: nothing left to do.
    let again = admin::rotate_key_encryption_key(&storage, NewKey::Hex(NEW_KEK.to_owned().into()))
        .await
        .unwrap();
    assert_eq!((again.changed, again.already), (0, 2));

    let error = match start(external.clone(), Some(helpers::TEST_KEK)).await {
        Ok(_) => panic!("the old key must no longer open the server keys"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("wrong key encryption key"), "{error}");
    let stack = start(external, Some(NEW_KEK)).await.unwrap();
    assert_eq!(identity_view(&stack, &fid).await, before);
    helpers::login(&stack, "carol", "after-rotation").await;
}

/// The same through the command line on a `polyproto up` data directory, without a new key
/// given: a fresh key replaces the key file (0600, no staging file left) and `up` on that
/// directory serves the same root cert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_key_encryption_key_of_a_data_directory_replaces_its_key_file() {
    let stack = helpers::spawn_stack(Backend::Sqlite).await;
    helpers::register_and_login(&stack, "dave").await;
    let fid = format!("dave@{}", helpers::DOMAIN);
    let before = identity_view(&stack, &fid).await;
    let Storage::Embedded { data_dir } = stack.storage.clone() else {
        unreachable!()
    };
    let mut stack = stack;
    let dir = stack._dir.take();
    stop(stack).await;
    let key_file = data_dir.join(stack::KEY_FILE_NAME);
    let old_key = std::fs::read_to_string(&key_file).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_polyproto"))
        .args(["admin", "--data-dir"])
        .arg(&data_dir)
        .args(["--domain", helpers::DOMAIN, "rotate-key-encryption-key"])
        .env_remove("P2_KEY_ENCRYPTION_KEY")
        .env_remove("P2_NEW_KEY_ENCRYPTION_KEY")
        .env("P2_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("re-encrypted 1 server key"), "{stdout}");
    let new_key = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(new_key.trim(), old_key.trim());
    assert_eq!(new_key.trim().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let leftovers: Vec<_> = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".new"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let stack = start(Storage::Embedded { data_dir }, None).await.unwrap();
    assert_eq!(identity_view(&stack, &fid).await, before);
    drop(stack);
    drop(dir);
}
