//! permessage-deflate (RFC 7692) on the WebSocket gateway, spoken by an independent client:
//! the Python `websockets` library (`deflate_client.py`, run with `P2_PYTHON`, which
//! scripts/test.sh installs). Both of its offers are accepted with `server_no_context_takeover`;
//! a large event arrives compressed on the wire and intact; the client's compressed
//! heartbeats (with and without context takeover) are understood; a message inflating past
//! the message limit closes with 4002. And `?compression=zstd` wins over a deflate offer.

use std::process::Stdio;

use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::gateway_ws::{WAIT, gateway_url, publish};
use crate::helpers::{TestStack, register_and_login};

/// The Python client, and its output lines.
struct Client {
    /// Killed when the test ends (`kill_on_drop`).
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Client {
    fn start(url: &str, token: &str, offer: &str) -> Self {
        let python = std::env::var_os("P2_PYTHON").unwrap_or_else(|| {
            panic!(
                "P2_PYTHON is not set: run the tests through scripts/test.sh, which installs the \
                 websockets library into a virtualenv and sets it"
            )
        });
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/deflate_client.py");
        let mut child = Command::new(python)
            .args([script, url, token, offer])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("could not start the Python client (P2_PYTHON)");
        let stdout = child.stdout.take().expect("piped stdout");
        Self {
            _child: child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The client's next report; fails on its errors, its end, or a timeout.
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("the Python client said nothing in time")
            .expect("reading the Python client failed")
            .expect("the Python client ended early (see its stderr above)");
        let report: Value = serde_json::from_str(&line).expect("a JSON line");
        assert!(
            report.get("error").is_none(),
            "the Python client failed: {report}"
        );
        report
    }
}

async fn a_python_websockets_client(stack: TestStack, offer: &str, answer: &[&str]) {
    let session = register_and_login(&stack, "dora").await;
    let mut client = Client::start(&gateway_url(&stack.base), &session.token, offer);
    let extensions = client.next().await["extensions"].clone();
    let extensions = extensions.as_str().expect("the extension was not agreed");
    for part in answer {
        assert!(extensions.contains(part), "{extensions} lacks {part}");
    }
    assert_eq!(client.next().await["identified"], true);
    let big = "a polyproto certificate, say ".repeat(200);
    publish(&stack, &session, 3, json!({"cert": big})).await;
    let report = client.next().await;
    assert_eq!(report["event"]["op"], "3", "{report}");
    assert_eq!(report["event"]["d"]["cert"], big.as_str());
    let wire = report["wire_bytes"].as_u64().unwrap();
    assert!(
        wire > 0 && wire * 10 < big.len() as u64,
        "{wire} bytes on the wire for {} of data",
        big.len()
    );
    assert_eq!(client.next().await["acks"], 5);
    assert_eq!(client.next().await["closed"], 4002);
}

async fn the_default_offer_is_agreed_with_server_no_context_takeover(stack: TestStack) {
    a_python_websockets_client(
        stack,
        "default",
        &["permessage-deflate", "server_no_context_takeover"],
    )
    .await;
}

async fn no_context_takeover_and_a_server_window_are_agreed_as_offered(stack: TestStack) {
    a_python_websockets_client(
        stack,
        "no-context",
        &[
            "permessage-deflate",
            "server_no_context_takeover",
            "client_no_context_takeover",
            "server_max_window_bits=10",
        ],
    )
    .await;
}

async fn zstd_wins_over_a_deflate_offer(stack: TestStack) {
    let mut request = format!("{}?compression=zstd", gateway_url(&stack.base))
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-extensions",
        "permessage-deflate; client_max_window_bits"
            .parse()
            .unwrap(),
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    assert!(
        response.headers().get("sec-websocket-extensions").is_none(),
        "{:?}",
        response.headers()
    );
    let hello = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Binary(frame) = hello else {
        panic!("expected a binary zstd frame, got {hello:?}");
    };
    let hello: Value =
        serde_json::from_slice(&zstd::stream::decode_all(frame.as_ref()).unwrap()).unwrap();
    assert_eq!(hello["op"], "1");
}

crate::on_both_backends!(
    the_default_offer_is_agreed_with_server_no_context_takeover,
    no_context_takeover_and_a_server_window_are_agreed_as_offered,
    zstd_wins_over_a_deflate_offer,
);
