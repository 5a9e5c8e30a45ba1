//! permessage-deflate: the negotiation, the codec, and the socket driven over an in-memory
//! pipe by a hand-made client (masked frames, deflate done with flate2 directly, as a client
//! library would).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::extract::ws::{CloseFrame, Message};
use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio_util::codec::Decoder as _;

use super::frame::{FrameError, OpCode, ServerCodec};
use super::socket::DeflateSocket;
use super::*;

fn offer(value: &str) -> Option<Params> {
    negotiate([value.as_bytes()])
}

#[test]
fn offers_are_accepted_with_server_no_context_takeover_added() {
    let cases = [
        (
            "permessage-deflate",
            "permessage-deflate; server_no_context_takeover",
        ),
        (
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
        ),
        (
            "permessage-deflate; client_max_window_bits=9",
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=9",
        ),
        (
            "permessage-deflate; client_max_window_bits=\"12\"",
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
        ),
        (
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; \
             client_no_context_takeover",
        ),
        (
            "PerMessage-Deflate; Server_No_Context_Takeover; client_no_context_takeover; \
             client_max_window_bits",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
    ];
    for (offered, answered) in cases {
        let params = offer(offered).unwrap_or_else(|| panic!("declined {offered}"));
        assert_eq!(params.response_header(), answered, "{offered}");
    }
    let params = offer("permessage-deflate; client_max_window_bits=8").unwrap();
    assert_eq!(params.client_window_bits, 8);
}

#[test]
fn the_first_acceptable_offer_wins_and_bad_ones_are_declined() {
    for declined in [
        "x-webkit-deflate-frame",
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; mystery",
        "permessage-deflate; client_max_window_bits=\"1 0\"",
        "permessage deflate",
        "",
    ] {
        assert_eq!(offer(declined), None, "{declined:?}");
    }
    let params = offer(
        "permessage-deflate; server_max_window_bits=8, \
         permessage-deflate; server_max_window_bits=11; x=\"a,b\", permessage-deflate; \
         server_max_window_bits=12",
    )
    .unwrap();
    assert_eq!(params.server_window_bits, 12);
    // Offers spread over several header lines, in order.
    let params = negotiate([
        &b"foo, permessage-deflate; server_max_window_bits=8"[..],
        &b"permessage-deflate; server_max_window_bits=9"[..],
    ])
    .unwrap();
    assert_eq!(params.server_window_bits, 9);
}

/// What a client's inflater makes of a server message (fresh per message: no takeover).
fn client_inflate(compressed: &[u8], window_bits: u8) -> Vec<u8> {
    let mut inflater = Decompress::new_with_window_bits(false, window_bits);
    let mut input = compressed.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    inflater
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

/// A client's deflate of one message, keeping `compressor`'s context, tail removed.
fn client_deflate(compressor: &mut Compress, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 1024);
    compressor
        .compress_vec(message, &mut out, FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

#[test]
fn server_messages_inflate_on_their_own_at_every_window_size() {
    let message =
        br#"{"n":"core","op":"3","d":{"cert":"a polyproto certificate, say"}}"#.repeat(300);
    for bits in 9..=15 {
        let compressed = compress(&message, bits).unwrap();
        // zlib reaches back only window - 262 bytes: 250 with 9 bits, which still helps.
        let factor = if bits == 9 { 5 } else { 50 };
        assert!(
            compressed.len() * factor < message.len(),
            "{bits}: {} bytes",
            compressed.len()
        );
        assert_eq!(client_inflate(&compressed, bits), message, "window {bits}");
        // The compressor was reset: the same message compresses the same way again.
        assert_eq!(compress(&message, bits).unwrap(), compressed);
    }
    // Incompressible input grows the output buffer as needed.
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let compressed = compress(&noise, 15).unwrap();
    assert_eq!(client_inflate(&compressed, 15), noise);
    assert_eq!(client_inflate(&compress(b"", 15).unwrap(), 15), b"");
}

fn params(offered: &str) -> Params {
    offer(offered).unwrap()
}

#[test]
fn client_messages_inflate_with_and_without_context_takeover() {
    let messages: Vec<Vec<u8>> = (0..5)
        .map(|i| {
            format!(
                r#"{{"n":"core","op":"0","d":{{"from":"{i}","to":"{}","except":[]}}}}"#,
                i + 2
            )
            .into_bytes()
        })
        .collect();
    // Context kept across messages, window 10 as answered.
    let mut inflater = Inflater::new(&params("permessage-deflate; client_max_window_bits"));
    let mut compressor = Compress::new_with_window_bits(Compression::default(), false, 10);
    let mut sizes = Vec::new();
    for message in &messages {
        let compressed = client_deflate(&mut compressor, message);
        sizes.push(compressed.len());
        assert_eq!(&inflater.inflate(&compressed, 1024).unwrap(), message);
    }
    assert!(sizes[4] < sizes[0], "the context is used: {sizes:?}");
    // Without client_max_window_bits: a 32 KiB window, reaching back over several messages.
    let mut inflater = Inflater::new(&params("permessage-deflate"));
    let mut compressor = Compress::new(Compression::default(), false);
    let block = |seed: u32| -> Vec<u8> {
        (0..8192u32)
            .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect()
    };
    for (round, seed) in [1, 2, 3, 1].into_iter().enumerate() {
        let message = block(seed);
        let compressed = client_deflate(&mut compressor, &message);
        if round == 3 {
            assert!(
                compressed.len() < 1000,
                "24 KiB back: {} bytes",
                compressed.len()
            );
        }
        assert_eq!(inflater.inflate(&compressed, 1 << 20).unwrap(), message);
    }
    // No context: every message from a fresh compressor, through the thread's inflater.
    let mut inflater = Inflater::new(&params("permessage-deflate; client_no_context_takeover"));
    for message in &messages {
        let mut fresh = Compress::new(Compression::default(), false);
        let compressed = client_deflate(&mut fresh, message);
        assert_eq!(&inflater.inflate(&compressed, 1024).unwrap(), message);
    }
    // A message ending the deflate stream (BFINAL) is read, and the next starts afresh.
    let mut inflater = Inflater::new(&params("permessage-deflate"));
    for message in &messages[..2] {
        let mut finishing = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(1024);
        finishing
            .compress_vec(message, &mut out, FlushCompress::Finish)
            .unwrap();
        assert_eq!(&inflater.inflate(&out, 1024).unwrap(), message);
    }
}

#[test]
fn inflation_stops_at_the_limit_and_corrupt_data_is_refused() {
    let mut compressor = Compress::new(Compression::default(), false);
    let bomb = client_deflate(&mut compressor, &vec![b' '; 8 << 20]);
    assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
    for offered in [
        "permessage-deflate",
        "permessage-deflate; client_no_context_takeover",
    ] {
        let mut inflater = Inflater::new(&params(offered));
        assert_eq!(
            inflater.inflate(&bomb, 64 * 1024),
            Err(InflateError::TooLarge)
        );
        // Exactly at the limit is fine.
        let mut fresh = Compress::new(Compression::default(), false);
        let exact = client_deflate(&mut fresh, &[b'x'; 1000]);
        let mut inflater = Inflater::new(&params(offered));
        assert_eq!(inflater.inflate(&exact, 1000).unwrap().len(), 1000);
        let mut inflater = Inflater::new(&params(offered));
        assert_eq!(inflater.inflate(&exact, 999), Err(InflateError::TooLarge));
        let mut inflater = Inflater::new(&params(offered));
        assert_eq!(
            inflater.inflate(&[0xff, 0xff, 0xff, 0x00, 0x12], 1000),
            Err(InflateError::Corrupt)
        );
    }
}

/// A client frame: masked with a fixed key.
fn client_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![u8::from(fin) << 7 | u8::from(rsv1) << 6 | opcode];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[test]
fn the_codec_reads_masked_frames_in_pieces_and_refuses_bad_ones() {
    let mut codec = ServerCodec::new(1000, true);
    let payload = vec![7u8; 300];
    let wire = client_frame(true, true, 1, &payload);
    let mut buffer = BytesMut::new();
    for byte in &wire[..wire.len() - 1] {
        buffer.extend_from_slice(&[*byte]);
        assert_eq!(codec.decode(&mut buffer).unwrap(), None);
    }
    buffer.extend_from_slice(&wire[wire.len() - 1..]);
    let frame = codec.decode(&mut buffer).unwrap().unwrap();
    assert!(frame.fin && frame.compressed);
    assert_eq!(frame.opcode, OpCode::Text);
    assert_eq!(frame.payload, payload);
    assert!(buffer.is_empty());

    let refused = |codec: &mut ServerCodec, wire: Vec<u8>| match codec
        .decode(&mut BytesMut::from(&wire[..]))
    {
        Err(super::frame::Error::Frame(error)) => error,
        other => panic!("expected a frame error, got {other:?}"),
    };
    assert_eq!(
        refused(&mut codec, client_frame(true, false, 3, b"")),
        FrameError::UnknownOpcode
    );
    assert_eq!(
        refused(&mut codec, vec![0xA1, 0x80, 0, 0, 0, 0]),
        FrameError::ReservedBits
    );
    assert_eq!(
        refused(&mut codec, client_frame(true, true, 0, b"x")),
        FrameError::ReservedBits
    );
    assert_eq!(
        refused(&mut codec, client_frame(true, true, 9, b"x")),
        FrameError::ReservedBits
    );
    assert_eq!(
        refused(
            &mut ServerCodec::new(1000, false),
            client_frame(true, true, 1, b"x")
        ),
        FrameError::ReservedBits
    );
    assert_eq!(
        refused(&mut codec, vec![0x81, 0x01, b'x']),
        FrameError::Unmasked
    );
    assert_eq!(
        refused(&mut codec, client_frame(false, false, 9, b"")),
        FrameError::BadControlFrame
    );
    assert_eq!(
        refused(&mut codec, client_frame(true, false, 9, &[0; 126])),
        FrameError::BadControlFrame
    );
    // Too long is known from the header alone: nothing of the payload is needed.
    let header_only = client_frame(true, false, 2, &[0; 1001])[..8].to_vec();
    assert_eq!(refused(&mut codec, header_only), FrameError::TooLarge);
    let huge = vec![0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
    assert_eq!(refused(&mut codec, huge), FrameError::TooLarge);
}

const LIMIT: usize = 64 * 1024;

/// A socket and the client's end of its pipe.
fn pipe(offered: &str) -> (DeflateSocket<DuplexStream>, DuplexStream) {
    let (server, client) = tokio::io::duplex(1 << 20);
    (DeflateSocket::new(server, params(offered), LIMIT), client)
}

/// The next server frame on the client's end: (fin, rsv1, opcode, payload).
async fn server_frame(client: &mut DuplexStream) -> (bool, bool, u8, Vec<u8>) {
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await.unwrap();
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let length = match head[1] & 0x7F {
        126 => u64::from(client.read_u16().await.unwrap()),
        127 => client.read_u64().await.unwrap(),
        short => u64::from(short),
    };
    let mut payload = vec![0; usize::try_from(length).unwrap()];
    client.read_exact(&mut payload).await.unwrap();
    (
        head[0] & 0x80 != 0,
        head[0] & 0x40 != 0,
        head[0] & 0x0F,
        payload,
    )
}

async fn next(socket: &mut DeflateSocket<DuplexStream>) -> Message {
    socket.next().await.unwrap().unwrap()
}

#[tokio::test]
async fn compressed_and_fragmented_client_messages_arrive_whole() {
    let (mut socket, mut client) = pipe("permessage-deflate; client_max_window_bits");
    let mut compressor = Compress::new_with_window_bits(Compression::default(), false, 10);
    let first = br#"{"n":"core","op":"2","d":{"token":"abc"}}"#;
    client
        .write_all(&client_frame(
            true,
            true,
            1,
            &client_deflate(&mut compressor, first),
        ))
        .await
        .unwrap();
    assert_eq!(
        next(&mut socket).await,
        Message::Text(std::str::from_utf8(first).unwrap().into())
    );
    // The second refers back into the first (context takeover), and comes in three frames.
    let second = client_deflate(
        &mut compressor,
        br#"{"n":"core","op":"2","d":{"token":"abd"}}"#,
    );
    let (a, rest) = second.split_at(second.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    client
        .write_all(&client_frame(false, true, 1, a))
        .await
        .unwrap();
    client
        .write_all(&client_frame(false, false, 0, b))
        .await
        .unwrap();
    // A ping between fragments is allowed, handed out, and answered.
    client
        .write_all(&client_frame(true, false, 9, b"ping!"))
        .await
        .unwrap();
    client
        .write_all(&client_frame(true, false, 0, c))
        .await
        .unwrap();
    assert_eq!(
        next(&mut socket).await,
        Message::Ping(Bytes::from_static(b"ping!"))
    );
    assert_eq!(
        next(&mut socket).await,
        Message::Text(r#"{"n":"core","op":"2","d":{"token":"abd"}}"#.into())
    );
    assert_eq!(
        server_frame(&mut client).await,
        (true, false, 0xA, b"ping!".to_vec())
    );
    // Uncompressed messages are fine too, text and binary.
    client
        .write_all(&client_frame(true, false, 2, b"\x00\x01"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut socket).await,
        Message::Binary(Bytes::from_static(b"\x00\x01"))
    );
}

#[tokio::test]
async fn server_messages_are_compressed_from_the_threshold_on() {
    let (mut socket, mut client) = pipe("permessage-deflate; server_max_window_bits=11");
    let big = format!(
        r#"{{"n":"core","op":"3","d":{{"cert":"{}"}}}}"#,
        "a polyproto certificate, say ".repeat(200)
    );
    socket
        .send(Message::Text(big.clone().into()))
        .await
        .unwrap();
    let (fin, rsv1, opcode, payload) = server_frame(&mut client).await;
    assert!(fin && rsv1);
    assert_eq!(opcode, 1);
    assert!(payload.len() * 10 < big.len(), "{} bytes", payload.len());
    assert_eq!(client_inflate(&payload, 11), big.as_bytes());
    // Short messages, and control frames, go as they are.
    socket
        .send(Message::Text(r#"{"n":"core","op":"7","d":[]}"#.into()))
        .await
        .unwrap();
    assert_eq!(
        server_frame(&mut client).await,
        (true, false, 1, br#"{"n":"core","op":"7","d":[]}"#.to_vec())
    );
    socket
        .send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    assert_eq!(
        server_frame(&mut client).await,
        (true, false, 9, b"p".to_vec())
    );
    socket
        .send(Message::Close(Some(CloseFrame {
            code: 4000,
            reason: "é".repeat(100).into(),
        })))
        .await
        .unwrap();
    let (_, rsv1, opcode, payload) = server_frame(&mut client).await;
    assert!(!rsv1);
    assert_eq!(opcode, 8);
    assert!(payload.len() <= 125);
    assert_eq!(&payload[..2], &4000u16.to_be_bytes());
    assert!(std::str::from_utf8(&payload[2..]).is_ok());
    // Nothing after a close.
    assert!(socket.send(Message::Text("late".into())).await.is_err());
}

#[tokio::test]
async fn the_clients_close_is_echoed_and_ends_the_stream() {
    let (mut socket, mut client) = pipe("permessage-deflate");
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    client
        .write_all(&client_frame(true, false, 8, &close))
        .await
        .unwrap();
    assert_eq!(
        next(&mut socket).await,
        Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "bye".into()
        }))
    );
    assert_eq!(
        server_frame(&mut client).await,
        (true, false, 8, 1000u16.to_be_bytes().to_vec())
    );
    assert!(socket.next().await.is_none());
}

#[tokio::test]
async fn bad_client_messages_end_the_stream_with_an_error() {
    let mut fresh = Compress::new(Compression::default(), false);
    let bomb = client_deflate(&mut fresh, &vec![b' '; 8 << 20]);
    let mut fresh = Compress::new(Compression::default(), false);
    let not_utf8 = client_deflate(&mut fresh, &[0xff, 0xfe, 0xfd]);
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("a bomb", vec![client_frame(true, true, 1, &bomb)]),
        (
            "compressed text that is not UTF-8",
            vec![client_frame(true, true, 1, &not_utf8)],
        ),
        (
            "plain text that is not UTF-8",
            vec![client_frame(true, false, 1, &[0xc3])],
        ),
        (
            "corrupt deflate",
            vec![client_frame(true, true, 2, &[0xff, 0xff, 0xff, 0x00])],
        ),
        (
            "continuation without a start",
            vec![client_frame(true, false, 0, b"x")],
        ),
        (
            "a new message inside a fragmented one",
            vec![
                client_frame(false, false, 1, b"x"),
                client_frame(true, false, 1, b"y"),
            ],
        ),
        (
            "fragments over the limit",
            vec![
                client_frame(false, false, 2, &vec![0; LIMIT / 2 + 1]),
                client_frame(true, false, 0, &vec![0; LIMIT / 2 + 1]),
            ],
        ),
        (
            "a close code clients may not send",
            vec![client_frame(true, false, 8, &1005u16.to_be_bytes())],
        ),
        (
            "half a close code",
            vec![client_frame(true, false, 8, &[3])],
        ),
        ("RSV2", vec![vec![0xA1, 0x80, 0, 0, 0, 0]]),
    ];
    for (case, frames) in cases {
        let (mut socket, mut client) = pipe("permessage-deflate");
        for frame in frames {
            client.write_all(&frame).await.unwrap();
        }
        match socket.next().await {
            Some(Err(_)) => {}
            other => panic!("{case}: expected an error, got {other:?}"),
        }
        assert!(socket.next().await.is_none(), "{case}: the stream ends");
    }
}
