//! `polyproto admin`: operator commands that work on the identity storage directly, whether
//! or not the server is running (a running identity service picks up a rotated key within
//! its refresh interval).

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
                std::fs::create_dir_all(&self.data_dir).with_context(|| {
                    format!(
                        "cannot create the data directory {}",
                        self.data_dir.display()
                    )
                })?;
                p2_runtime::storage::sqlite_url_in(&self.data_dir, "identity")
            }
        };
        if self.key_encryption_key.is_none() && self.database_url.is_none() {
            p2_identity::cipher::KeyCipher::load_or_create_file(&key_file)?;
        }
        Ok(p2_identity::IdentityConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            database_url,
            options: p2_identity::IdentityOptions {
                key_encryption_key: self
                    .key_encryption_key
                    .as_ref()
                    .map(|k| k.expose_secret().to_owned().into()),
                key_encryption_key_file: Some(key_file),
                registration: p2_identity::Registration::Closed,
                ..p2_identity::IdentityOptions::for_domain(&self.domain)
            },
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

/// Rotates the server key; returns the new root ID-Cert (PEM).
pub async fn rotate_key(storage: &AdminStorage) -> anyhow::Result<String> {
    let (generation, _) = open(storage)
        .await?
        .rotate_now()
        .await
        .map_err(|error| anyhow::anyhow!("{}", tonic::Status::from(error).message()))?;
    Ok(generation.cert_pem.clone())
}

/// Runs an admin command; what it prints on stdout is the result (fid or PEM).
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    match args.command {
        AdminCommand::CreateActor { name, admin } => {
            let fid = create_actor(&args.storage, &name, admin, read_password()?).await?;
            println!("{fid}");
        }
        AdminCommand::RotateKey => print!("{}", rotate_key(&args.storage).await?),
    }
    Ok(())
}
