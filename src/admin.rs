//! `polyproto admin`: operator commands that work on the identity storage directly, whether
//! or not the server is running (a running identity service picks up a rotated key within
//! its refresh interval).
//!
//! The gateway events these commands cause (op 6 for `rotate-key`; op 4 and `CloseSession`
//! for `revoke-sessions` and `disable`) are written to the event outboxes of the identity and
//! session databases in the transactions of the changes, exactly as the services write them;
//! the command itself never talks to the events service. The running services' outbox relays
//! find the rows at their next poll (within a second) and deliver them; with no service
//! running, the rows wait for the next start.

use std::io::BufRead as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use secrecy::ExposeSecret as _;

/// `polyproto admin ...`
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
    /// Where the identity data lives.
    #[command(flatten)]
    pub storage: AdminStorage,
}

/// Admin subcommands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an actor (also when registration is closed). The password comes from
    /// `P2_ADMIN_PASSWORD` or, when unset, the first line of standard input.
    CreateActor {
        /// Local name of the actor (the part before `@`).
        name: String,
        /// Make the actor an administrator of this home server.
        #[arg(long)]
        admin: bool,
    },
    /// Generate a new server key pair and root ID-Cert; prints the new cert's PEM. Old certs
    /// stay retrievable by time.
    RotateKey,
    /// Re-encrypt every stored server private key with a new key encryption key, all or
    /// none. The current key comes from P2_KEY_ENCRYPTION_KEY (or the data directory's key
    /// file), the new one from P2_NEW_KEY_ENCRYPTION_KEY or --new-key-encryption-key-file; with
    /// a data directory and neither given, a new key is generated and the key file replaced.
    /// Stop the identity service first; start it again with the new key.
    RotateKeyEncryptionKey {
        /// The new key encryption key (64 hex characters).
        #[arg(
            long = "new-key-encryption-key",
            env = "P2_NEW_KEY_ENCRYPTION_KEY",
            hide_env_values = true
        )]
        new_key: Option<secrecy::SecretString>,
        /// A file holding the new key encryption key.
        #[arg(
            long = "new-key-encryption-key-file",
            env = "P2_NEW_KEY_ENCRYPTION_KEY_FILE",
            conflicts_with = "new_key"
        )]
        new_key_file: Option<PathBuf>,
    },
    /// Make an actor an administrator of this home server (effective at once).
    Promote {
        /// Local name of the actor.
        name: String,
    },
    /// Withdraw an actor's administrator rights (effective at once: admin-only actions read
    /// the flag when they are used, never from a token).
    Demote {
        /// Local name of the actor.
        name: String,
    },
    /// List an actor's sessions: session ID, token issued, token expires (UNIX seconds).
    Sessions {
        /// Local name of the actor.
        name: String,
    },
    /// End an actor's sessions (all, or one): their ID-Certs are revoked and their tokens die
    /// (at once with PostgreSQL; within 5 s on a running `polyproto up`).
    RevokeSessions {
        /// Local name of the actor.
        name: String,
        /// Only this session.
        #[arg(long)]
        session_id: Option<String>,
    },
    /// Disable an actor: no more logins, new ID-Certs or sensitive actions, and every session
    /// ends (as `revoke-sessions`).
    Disable {
        /// Local name of the actor.
        name: String,
    },
    /// Re-enable a disabled actor (its ended sessions stay ended).
    Enable {
        /// Local name of the actor.
        name: String,
    },
}

/// Storage flags, the same as `polyproto up` (embedded) or `polyproto identity` (external).
#[derive(Debug, Clone, Args)]
pub struct AdminStorage {
    /// Data directory of `polyproto up` (used when --database-url is not given).
    #[arg(
        long = "data-dir",
        env = "P2_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// The home server's domain.
    #[arg(
        long = "domain",
        env = "P2_DOMAIN",
        default_value = "localhost",
        global = true
    )]
    pub domain: String,
    /// Identity database URL (`sqlite:PATH` or `postgres://...`); defaults to the data
    /// directory's SQLite file.
    #[arg(long = "database-url", env = "P2_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Session database URL (for the session commands); defaults to the data directory's
    /// SQLite file.
    #[arg(
        long = "session-database-url",
        env = "P2_SESSION_DATABASE_URL",
        global = true
    )]
    pub session_database_url: Option<String>,
    /// Key encryption key (64 hex); defaults to the data directory's key file.
    #[arg(
        long = "key-encryption-key",
        env = "P2_KEY_ENCRYPTION_KEY",
        hide_env_values = true,
        global = true
    )]
    pub key_encryption_key: Option<secrecy::SecretString>,
}

impl AdminStorage {
    fn identity_config(&self) -> anyhow::Result<p2_identity::IdentityConfig> {
        let key_file = self.data_dir.join(crate::stack::KEY_FILE_NAME);
        let database_url = match &self.database_url {
            Some(url) => url.clone(),
            None => {
                p2_runtime::storage::create_private_dir(&self.data_dir)?;
                p2_runtime::storage::sqlite_url_in(&self.data_dir, "identity")
            }
        };
        if self.key_encryption_key.is_none() && self.database_url.is_none() {
            p2_identity::cipher::KeyCipher::load_or_create_file(&key_file)?;
        }
        Ok(p2_identity::IdentityConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            database_url,
            pool: p2_runtime::storage::PoolConfig::default(),
            // The admin CLI checks no passwords: no throttle state to share.
            redis_url: None,
            redis_prefix: p2_identity::throttle::REDIS_PREFIX.into(),
            options: p2_identity::IdentityOptions {
                key_encryption_key: self
                    .key_encryption_key
                    .as_ref()
                    .map(|k| k.expose_secret().to_owned().into()),
                key_encryption_key_file: Some(key_file),
                registration: p2_identity::Registration::Closed,
                ..p2_identity::IdentityOptions::for_domain(&self.domain)
            },
            // The admin CLI runs no relay: it only writes outbox rows, which the running
            // identity service relays. The capacity is the default one.
            outbox: p2_outbox::OutboxConfig::default(),
            shutdown: p2_runtime::config::ShutdownConfig::immediate(),
            // The admin CLI serves nothing: a throwaway key satisfies the state.
            internal: p2_runtime::internal::InternalKeyConfig::with_key(
                &p2_runtime::internal::InternalKey::generate(),
            ),
        })
    }
}

fn read_password() -> anyhow::Result<String> {
    if let Ok(password) = std::env::var("P2_ADMIN_PASSWORD") {
        return Ok(password);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(
        !password.is_empty(),
        "no password: set P2_ADMIN_PASSWORD or write it on standard input"
    );
    Ok(password)
}

async fn open(storage: &AdminStorage) -> anyhow::Result<p2_identity::IdentityState> {
    let config = storage.identity_config()?;
    p2_identity::IdentityState::open(&config).await
}

/// Creates an actor (even when registration is closed); returns its federation ID.
pub async fn create_actor(
    storage: &AdminStorage,
    name: &str,
    admin: bool,
    password: String,
) -> anyhow::Result<String> {
    // In process, on the operator's authority: the only path that may create administrators
    // or register while registration is closed (never reachable over gRPC).
    let fid = open(storage)
        .await?
        .register(
            name,
            password,
            p2_identity::actors::Registrant::Operator { admin },
        )
        .await
        .map_err(|error| anyhow::anyhow!("{}", tonic::Status::from(error).message()))?;
    Ok(fid.to_string())
}

/// Rotates the server key; returns the new root ID-Cert (PEM). Gateway op 6 is queued with the
/// new key, for the running identity service to relay.
pub async fn rotate_key(storage: &AdminStorage) -> anyhow::Result<String> {
    let (generation, _) = open(storage)
        .await?
        .rotate_now()
        .await
        .map_err(|error| anyhow::anyhow!("{}", tonic::Status::from(error).message()))?;
    Ok(generation.cert_pem.clone())
}

/// Where the new key encryption key of [`rotate_key_encryption_key`] comes from.
#[derive(Debug)]
pub enum NewKey {
    /// Given as 64 hex characters.
    Hex(secrecy::SecretString),
    /// In a file.
    File(PathBuf),
    /// Generated (only with a data directory, whose key file then changes).
    Generate,
}

/// Re-encrypts every stored server private key with a new key encryption key (see
/// [`p2_identity::keyring::reencrypt_private_keys`]). With a data directory (no
/// `--database-url`, no `P2_KEY_ENCRYPTION_KEY`) the data directory's key file is replaced
/// too: the new key is written to `<file>.new` before the database changes and renamed over
/// the old file after, so a crash in between leaves both keys on disk (the database opens with
/// exactly one of them).
pub async fn rotate_key_encryption_key(
    storage: &AdminStorage,
    new: NewKey,
) -> anyhow::Result<p2_identity::keyring::Reencrypted> {
    use p2_identity::cipher::KeyCipher;
    let config = storage.identity_config()?;
    let old = config.options.load_cipher()?;
    let embedded = storage.database_url.is_none() && storage.key_encryption_key.is_none();
    let key_file = storage.data_dir.join(crate::stack::KEY_FILE_NAME);
    let staged = key_file.with_extension("key.new");
    let new_hex: secrecy::SecretString = match new {
        NewKey::Hex(key) => key,
        NewKey::File(path) => std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .into(),
        NewKey::Generate => {
            anyhow::ensure!(
                embedded,
                "no new key: set P2_NEW_KEY_ENCRYPTION_KEY or --new-key-encryption-key-file \
                 (a key is generated only for a data directory)"
            );
            p2_identity::cipher::generate_key_hex()
        }
    };
    let new =
        KeyCipher::from_hex(new_hex.expose_secret()).context("invalid new key encryption key")?;
    if embedded {
        // A leftover from an interrupted run is replaced (the database tells which key fits).
        let _ = std::fs::remove_file(&staged);
        p2_identity::cipher::write_private_file(&staged, new_hex.expose_secret().trim().as_bytes())
            .with_context(|| format!("cannot write {}", staged.display()))?;
    }
    let db = p2_runtime::storage::connect(
        &config.database_url,
        "identity",
        p2_identity::store::MIGRATIONS,
    )
    .await?;
    let store = p2_identity::store::Store::new(db);
    let done = p2_identity::keyring::reencrypt_private_keys(&store, &old, &new).await?;
    if embedded {
        std::fs::rename(&staged, &key_file).with_context(|| {
            format!(
                "the keys are now encrypted with the key in {}; move it to {}",
                staged.display(),
                key_file.display()
            )
        })?;
    }
    tracing::info!(
        changed = done.changed,
        already = done.already,
        "re-encrypted the server keys"
    );
    Ok(done)
}

/// Grants (`admin`) or withdraws administrator rights of `name`; returns its FID.
pub async fn set_admin(storage: &AdminStorage, name: &str, admin: bool) -> anyhow::Result<String> {
    let state = open(storage).await?;
    let local_name = p2_model::validate_local_name(name)
        .map_err(|e| anyhow::anyhow!("invalid actor name {name:?}: {e}"))?;
    anyhow::ensure!(
        state.store().set_admin(&local_name, admin).await?,
        "no actor {local_name:?} on this server"
    );
    let fid = p2_model::FederationId::new(&local_name, state.domain())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(fid = %fid, admin, "changed administrator rights");
    Ok(fid.to_string())
}

impl AdminStorage {
    async fn sessions(&self) -> anyhow::Result<p2_session::storage::SessionStore> {
        let url = match &self.session_database_url {
            Some(url) => url.clone(),
            None => {
                p2_runtime::storage::create_private_dir(&self.data_dir)?;
                p2_runtime::storage::sqlite_url_in(&self.data_dir, "session")
            }
        };
        let db = p2_runtime::storage::connect(&url, "session", p2_session::MIGRATIONS).await?;
        Ok(p2_session::storage::SessionStore::new(db))
    }
}

/// The FID of the actor `name` of this server, which must exist.
async fn existing_actor(
    state: &p2_identity::IdentityState,
    name: &str,
) -> anyhow::Result<(String, p2_model::FederationId)> {
    let local_name = p2_model::validate_local_name(name)
        .map_err(|e| anyhow::anyhow!("invalid actor name {name:?}: {e}"))?;
    anyhow::ensure!(
        state.store().actor(&local_name).await?.is_some(),
        "no actor {local_name:?} on this server"
    );
    let fid = p2_model::FederationId::new(&local_name, state.domain())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((local_name, fid))
}

/// An actor's sessions as (session ID, token issued, token expires).
pub async fn list_sessions(
    storage: &AdminStorage,
    name: &str,
) -> anyhow::Result<Vec<(String, u64, u64)>> {
    let state = open(storage).await?;
    let (_, fid) = existing_actor(&state, name).await?;
    let rows = storage.sessions().await?.list(fid.as_str()).await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.session_id, r.created_at, r.expires_at))
        .collect())
}

/// Ends the actor's sessions (all, or `only`): revokes their valid ID-Certs (queueing op 4
/// for each in the identity database), then deletes their tokens (queueing `CloseSession` for
/// each in the session database). Returns how many sessions ended.
pub async fn revoke_sessions(
    storage: &AdminStorage,
    name: &str,
    only: Option<&str>,
) -> anyhow::Result<usize> {
    let state = open(storage).await?;
    let (_, fid) = existing_actor(&state, name).await?;
    let sessions = storage.sessions().await?;
    let refused = |error: p2_identity::IdentityError| {
        anyhow::anyhow!("{}", tonic::Status::from(error).message())
    };
    let mut ended = std::collections::BTreeSet::new();
    match only {
        Some(session_id) => {
            let session_id = p2_model::SessionId::parse(session_id)
                .map_err(|e| anyhow::anyhow!("invalid session ID {session_id:?}: {e}"))?;
            match state.revoke(&fid, &session_id).await {
                Ok(row) => {
                    ended.insert(row.session_id);
                }
                Err(p2_identity::IdentityError::NoValidCert { .. }) => {}
                Err(error) => return Err(refused(error)),
            }
            if sessions.delete(fid.as_str(), session_id.as_str()).await? {
                ended.insert(session_id.to_string());
            }
        }
        None => {
            for row in state.revoke_all(&fid).await.map_err(refused)? {
                ended.insert(row.session_id);
            }
            for row in sessions.list(fid.as_str()).await? {
                sessions.delete(fid.as_str(), &row.session_id).await?;
                ended.insert(row.session_id);
            }
        }
    }
    tracing::info!(fid = %fid, sessions = ended.len(), "operator ended sessions");
    Ok(ended.len())
}

/// Disables (`true`) or re-enables an actor; disabling also ends every session.
pub async fn set_disabled(
    storage: &AdminStorage,
    name: &str,
    disabled: bool,
) -> anyhow::Result<String> {
    let state = open(storage).await?;
    let (local_name, fid) = existing_actor(&state, name).await?;
    state.store().set_disabled(&local_name, disabled).await?;
    if disabled {
        revoke_sessions(storage, name, None).await?;
    }
    tracing::info!(fid = %fid, disabled, "operator changed whether an actor is disabled");
    Ok(fid.to_string())
}

/// Runs an admin command; what it prints on stdout is the result (fid or PEM).
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    match args.command {
        AdminCommand::CreateActor { name, admin } => {
            let fid = create_actor(&args.storage, &name, admin, read_password()?).await?;
            println!("{fid}");
        }
        AdminCommand::RotateKey => print!("{}", rotate_key(&args.storage).await?),
        AdminCommand::RotateKeyEncryptionKey {
            new_key,
            new_key_file,
        } => {
            let new = match (new_key, new_key_file) {
                (Some(key), _) => NewKey::Hex(key),
                (None, Some(path)) => NewKey::File(path),
                (None, None) => NewKey::Generate,
            };
            let done = rotate_key_encryption_key(&args.storage, new).await?;
            println!(
                "re-encrypted {} server key(s) ({} already used the new key)",
                done.changed, done.already
            );
        }
        AdminCommand::Promote { name } => {
            println!("{}", set_admin(&args.storage, &name, true).await?)
        }
        AdminCommand::Demote { name } => {
            println!("{}", set_admin(&args.storage, &name, false).await?)
        }
        AdminCommand::Sessions { name } => {
            for (session_id, created, expires) in list_sessions(&args.storage, &name).await? {
                println!("{session_id}\t{created}\t{expires}");
            }
        }
        AdminCommand::RevokeSessions { name, session_id } => {
            let ended = revoke_sessions(&args.storage, &name, session_id.as_deref()).await?;
            println!("{ended}");
        }
        AdminCommand::Disable { name } => {
            println!("{}", set_disabled(&args.storage, &name, true).await?)
        }
        AdminCommand::Enable { name } => {
            println!("{}", set_disabled(&args.storage, &name, false).await?)
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use p2_outbox::testing::{Call, FakeEvents};
    use p2_runtime::internal::{InternalKey, InternalKeyConfig};
    use tokio_util::sync::CancellationToken;

    use super::*;

    const PASSWORD: &str = "alice password 1";
    const ALICE: &str = "alice@admin.example";

    /// The calls the fake received that satisfy `which`, once at least `count` of them did.
    async fn wait_for(
        events: &FakeEvents,
        count: usize,
        which: impl Fn(&Call) -> bool,
    ) -> Vec<Call> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let found: Vec<_> = events.calls().into_iter().filter(|c| which(c)).collect();
            if found.len() >= count {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {found:?} after 15 s; everything: {:?}",
                events.calls()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn invalidation_of(call: &Call, session_id: &str) -> bool {
        let Call::Publish(request) = call else {
            return false;
        };
        call.op() == Some(4)
            && request.audience == Some(p2_outbox::message::actor_audience(ALICE, Some(session_id)))
    }

    fn closing(call: &Call, session_id: &str) -> bool {
        matches!(call, Call::CloseSession(_))
            && call.session() == Some((ALICE.to_owned(), session_id.to_owned()))
    }

    /// The admin CLI only writes outbox rows (it runs no relay); identity and session
    /// services running on the same data directory deliver them, at their next poll.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admin_commands_queue_events_that_the_running_services_relay() {
        let dir = tempfile::tempdir().unwrap();
        let storage = AdminStorage {
            data_dir: dir.path().to_owned(),
            domain: "admin.example".into(),
            database_url: None,
            session_database_url: None,
            key_encryption_key: None,
        };
        assert_eq!(
            create_actor(&storage, "alice", false, PASSWORD.into())
                .await
                .unwrap(),
            ALICE
        );
        // A running identity and session service of one deployment, beside the CLI.
        let key = InternalKey::generate();
        let events = FakeEvents::start(&key).await.unwrap();
        let identity_config = p2_identity::IdentityConfig {
            internal: InternalKeyConfig::with_key(&key),
            outbox: p2_outbox::OutboxConfig::new(events.url.clone()),
            ..storage.identity_config().unwrap()
        };
        let identity = p2_identity::IdentityState::open(&identity_config)
            .await
            .unwrap();
        let session = p2_session::SessionGrpc::open(&p2_session::SessionConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            database_url: p2_runtime::storage::sqlite_url_in(dir.path(), "session"),
            pool: p2_runtime::storage::PoolConfig::default(),
            redis_url: None,
            redis_prefix: p2_session::storage::redis::DEFAULT_PREFIX.to_owned(),
            domain: "admin.example".to_owned(),
            identity_url: "http://127.0.0.1:1".into(),
            options: p2_session::SessionOptions::default(),
            outbox: p2_outbox::OutboxConfig::new(events.url.clone()),
            shutdown: p2_runtime::config::ShutdownConfig::immediate(),
            internal: InternalKeyConfig::with_key(&key),
        })
        .await
        .unwrap();
        let stop = CancellationToken::new();
        let listener = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let identity_task = tokio::spawn(p2_identity::serve_state(
            identity.clone(),
            Duration::ZERO,
            listener().await.unwrap(),
            stop.clone(),
        ));
        let session_task = tokio::spawn(p2_session::serve_opened(
            session.clone(),
            Duration::ZERO,
            listener().await.unwrap(),
            stop.clone(),
        ));
        // Alice logs in twice (a cert from identity, a token from session).
        let fid = p2_model::FederationId::parse(ALICE).unwrap();
        for id in ["laptop", "phone"] {
            let session_id = p2_model::SessionId::parse(id).unwrap();
            let csr =
                p2_model::build_csr(&p2_model::generate_signing_key(), &fid, &session_id).unwrap();
            identity
                .issue_login_cert("alice", PASSWORD.into(), csr.as_bytes(), None)
                .await
                .unwrap();
            session.issue_token(&fid, &session_id).await.unwrap();
        }
        wait_for(&events, 2, |c| matches!(c, Call::OpenSession(_))).await;

        // One session revoked: op 4 (from identity's outbox) to the others, then its close.
        assert_eq!(
            revoke_sessions(&storage, "alice", Some("phone"))
                .await
                .unwrap(),
            1
        );
        wait_for(&events, 1, |c| invalidation_of(c, "phone")).await;
        wait_for(&events, 1, |c| closing(c, "phone")).await;
        // Disabling ends the rest the same way.
        set_disabled(&storage, "alice", true).await.unwrap();
        wait_for(&events, 1, |c| invalidation_of(c, "laptop")).await;
        wait_for(&events, 1, |c| closing(c, "laptop")).await;
        // A rotation: op 6 to the whole server with the new root.
        let pem = rotate_key(&storage).await.unwrap();
        let changed = wait_for(&events, 1, |c| c.op() == Some(6)).await;
        let d: serde_json::Value = serde_json::from_str(&changed[0].data().unwrap()).unwrap();
        assert_eq!(d["cert"], serde_json::Value::String(pem));
        assert!(
            d["oldInvalidSince"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .is_ok()
        );

        // Everything delivered once: two opens, two op 4, two closes, one op 6.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(events.calls().len(), 7, "{:?}", events.calls());
        stop.cancel();
        identity_task.await.unwrap().unwrap();
        session_task.await.unwrap().unwrap();
        // The stopped services closed their pools: look with fresh ones.
        for (component, migrations) in [
            ("identity", p2_identity::store::MIGRATIONS),
            ("session", p2_session::MIGRATIONS),
        ] {
            let url = p2_runtime::storage::sqlite_url_in(dir.path(), component);
            let db = p2_runtime::storage::connect(&url, component, migrations)
                .await
                .unwrap();
            assert!(
                p2_outbox::pending(&db).await.unwrap().is_empty(),
                "{component}"
            );
        }
    }
}
