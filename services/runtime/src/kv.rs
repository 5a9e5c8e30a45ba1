//! The Redis connection: challenges and key trials (`SET NX EX`, `GETDEL`) and event streams.
//! A `ConnectionManager` reconnects by itself; start-up checks that Redis answers.

use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::redact_url;

/// How long start-up waits for Redis before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `url` and checks it answers `PING`. Errors name the component and the
/// (redacted) URL.
pub async fn connect(url: &str, component: &str) -> anyhow::Result<ConnectionManager> {
    let what = || {
        format!(
            "cannot connect to the {component} Redis at {}",
            redact_url(url)
        )
    };
    let client = redis::Client::open(url).with_context(what)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(1);
    let mut manager = tokio::time::timeout(
        CONNECT_TIMEOUT,
        ConnectionManager::new_with_config(client, config),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out after {CONNECT_TIMEOUT:?}"))
    .with_context(what)?
    .with_context(what)?;
    let _: String = redis::cmd("PING")
        .query_async(&mut manager)
        .await
        .with_context(what)?;
    Ok(manager)
}

/// How long a readiness probe waits for Redis or the database.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The span of one Redis call (`operation`: its class, e.g. `challenge_put`): a child of the
/// request's span, exported like the SQL ones (`db.system = redis`).
pub fn span(operation: &'static str) -> tracing::Span {
    tracing::info_span!(
        "redis",
        otel.name = operation,
        otel.kind = "client",
        db.system = "redis"
    )
}

/// Whether Redis answers `PING` within [`PROBE_TIMEOUT`] (readiness probes). A failure is
/// counted in `polyproto_redis_errors_total{operation="ping"}` under the process's component.
pub async fn ping(conn: &ConnectionManager) -> bool {
    let mut conn = conn.clone();
    let ping = async move {
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok()
    };
    let ok = tokio::time::timeout(PROBE_TIMEOUT, ping)
        .await
        .unwrap_or(false);
    if !ok {
        crate::metrics::redis_error(crate::metrics::process_component(), "ping");
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn real_redis_answers_set_nx_with_expiry() {
        let url = std::env::var("P2_TEST_REDIS_URL")
            .expect("P2_TEST_REDIS_URL must be set: run scripts/test.sh");
        let mut conn = connect(&url, "test").await.unwrap();
        let key = format!("p2:test:{}", std::process::id());
        let first: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg("1")
            .arg("NX")
            .arg("EX")
            .arg(30)
            .query_async(&mut conn)
            .await
            .unwrap();
        let second: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg("2")
            .arg("NX")
            .arg("EX")
            .arg(30)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(first.as_deref(), Some("OK"));
        assert_eq!(second, None, "NX must refuse to overwrite");
        let taken: Option<String> = redis::cmd("GETDEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(taken.as_deref(), Some("1"));
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_a_clear_error() {
        let err = connect("redis://:secret@127.0.0.1:1/", "session")
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("session Redis"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}
