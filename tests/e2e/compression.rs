//! Spec 3.6: zstd is offered on the HTTP API (gzip for clients without it), by content
//! negotiation; a client that asks for neither gets the plain body.

use std::io::Read as _;

use crate::helpers::{Backend, spawn_stack};

async fn get(
    stack: &crate::helpers::TestStack,
    path: &str,
    accept: Option<&str>,
) -> reqwest::Response {
    let mut request = stack.http.get(stack.url(path));
    if let Some(accept) = accept {
        request = request.header("accept-encoding", accept);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_compressed_with_zstd_or_gzip_when_the_client_asks() {
    let stack = spawn_stack(Backend::Sqlite).await;
    let path = "/.p2/core/v1/idcert/server";
    let plain = get(&stack, path, None).await;
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.bytes().await.unwrap();
    assert!(plain.len() > 500, "a certificate answer");

    let zstd = get(&stack, path, Some("zstd")).await;
    assert_eq!(zstd.status(), 200);
    assert_eq!(zstd.headers()["content-encoding"], "zstd");
    let compressed = zstd.bytes().await.unwrap();
    assert!(
        compressed.len() < plain.len(),
        "{} vs {}",
        compressed.len(),
        plain.len()
    );
    assert_eq!(zstd::decode_all(&compressed[..]).unwrap(), plain);

    // zstd preferred when both are offered; gzip alone works too.
    let both = get(&stack, path, Some("gzip, zstd")).await;
    assert_eq!(both.headers()["content-encoding"], "zstd");
    let gzip = get(&stack, path, Some("gzip")).await;
    assert_eq!(gzip.headers()["content-encoding"], "gzip");
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&gzip.bytes().await.unwrap()[..])
        .read_to_end(&mut decoded)
        .unwrap();
    assert_eq!(decoded, plain);

    // Errors (problem+json) are negotiated the same way.
    let missing = get(
        &stack,
        "/.p2/core/v1/idcert/actor/nobody-at-all-here@p2.test",
        Some("zstd"),
    )
    .await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    let body = zstd::decode_all(&missing.bytes().await.unwrap()[..]);
    let text = String::from_utf8(body.unwrap()).unwrap();
    assert!(text.contains("\"status\":404"), "{text}");
}
