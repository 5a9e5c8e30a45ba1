//! The WebSocket handshake (RFC 6455 4.2) of a connection that offers permessage-deflate,
//! answered here rather than by axum, whose transport cannot carry the extension.
//!
//! Only a request axum would accept as well takes this path (HTTP/1.1 `GET`, `Connection:
//! upgrade`, `Upgrade: websocket`, version 13, a key, an upgradable connection) with an
//! acceptable offer; anything else goes to axum's extractor, which answers or refuses it as
//! for every other client.

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::Response;
use base64::Engine as _;
use sha1::{Digest as _, Sha1};

use super::deflate::{self, Params};

/// The RFC 6455 GUID appended to the client's key.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// An accepted deflate handshake: the 101 to send, and the connection once upgraded.
pub struct DeflateUpgrade {
    /// The agreed parameters.
    pub params: Params,
    /// Resolves to the raw connection once the 101 went out.
    pub on_upgrade: hyper::upgrade::OnUpgrade,
    /// The 101 answer.
    pub response: Response,
}

/// The deflate handshake of `parts`, when it is a WebSocket handshake with an acceptable
/// permessage-deflate offer; `None` leaves `parts` untouched.
pub fn deflate(parts: &mut Parts) -> Option<DeflateUpgrade> {
    if parts.method != Method::GET || parts.version != Version::HTTP_11 {
        return None;
    }
    let headers = &parts.headers;
    let params = deflate::negotiate(
        headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .map(HeaderValue::as_bytes),
    )?;
    if !has_token(headers, header::CONNECTION, "upgrade")
        || !has_token(headers, header::UPGRADE, "websocket")
        || headers.get(header::SEC_WEBSOCKET_VERSION)?.as_bytes() != b"13"
    {
        return None;
    }
    let accept = accept_key(headers.get(header::SEC_WEBSOCKET_KEY)?.as_bytes());
    let extensions = HeaderValue::try_from(params.response_header()).ok()?;
    let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let answer = response.headers_mut();
    answer.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    answer.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    answer.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    answer.insert(header::SEC_WEBSOCKET_EXTENSIONS, extensions);
    Some(DeflateUpgrade {
        params,
        on_upgrade,
        response,
    })
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
fn accept_key(key: &[u8]) -> HeaderValue {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    let encoded = base64::engine::general_purpose::STANDARD.encode(sha1.finalize());
    // Base64 is always a valid header value.
    HeaderValue::try_from(encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether a comma-separated header holds `token` (any case).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_rfc_6455s_example() {
        // RFC 6455 1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut builder = axum::http::Request::builder()
            .method(Method::GET)
            .uri("/.p2/core/v1/gateway");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let mut request = builder.body(()).unwrap_or_default();
        // What hyper puts on an upgradable request (here one that never upgrades).
        let on_upgrade = hyper::upgrade::on(&mut request);
        let (mut parts, ()) = request.into_parts();
        parts.extensions.insert(on_upgrade);
        parts
    }

    const HANDSHAKE: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn a_deflate_offer_is_answered_with_101_and_the_agreed_parameters() {
        let mut headers = HANDSHAKE.to_vec();
        headers.push((
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        ));
        let mut parts = parts(&headers);
        let Some(upgrade) = deflate(&mut parts) else {
            panic!("the offer was declined");
        };
        assert_eq!(upgrade.response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let answer = upgrade.response.headers();
        assert_eq!(
            answer["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(
            answer["sec-websocket-extensions"],
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=10"
        );
        assert!(
            parts
                .extensions
                .get::<hyper::upgrade::OnUpgrade>()
                .is_none()
        );
    }

    #[test]
    fn without_an_acceptable_offer_or_a_full_handshake_the_request_is_left_to_axum() {
        for headers in [
            HANDSHAKE.to_vec(),
            [
                HANDSHAKE.to_vec(),
                vec![("sec-websocket-extensions", "x-webkit-deflate-frame")],
            ]
            .concat(),
            [
                HANDSHAKE.to_vec(),
                vec![(
                    "sec-websocket-extensions",
                    "permessage-deflate; server_max_window_bits=8",
                )],
            ]
            .concat(),
            [
                HANDSHAKE[..3].to_vec(),
                vec![("sec-websocket-extensions", "permessage-deflate")],
            ]
            .concat(),
            [
                vec![
                    HANDSHAKE[0],
                    HANDSHAKE[1],
                    ("sec-websocket-version", "8"),
                    HANDSHAKE[3],
                ],
                vec![("sec-websocket-extensions", "permessage-deflate")],
            ]
            .concat(),
        ] {
            let mut parts = parts(&headers);
            assert!(deflate(&mut parts).is_none(), "{headers:?}");
            assert!(
                parts
                    .extensions
                    .get::<hyper::upgrade::OnUpgrade>()
                    .is_some(),
                "{headers:?}"
            );
        }
    }
}
