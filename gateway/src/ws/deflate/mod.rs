//! permessage-deflate (RFC 7692) on the WebSocket gateway, for clients that ask for it in
//! `Sec-WebSocket-Extensions` (browsers, most WebSocket libraries).
//!
//! The WebSocket library under axum (tungstenite) fails every frame with RSV1 set, so a
//! connection that negotiates the extension runs on this module's own RFC 6455 transport
//! ([`socket::DeflateSocket`]) over the upgraded connection; every other connection keeps
//! axum's. Both meet the same connection state machine ([`super::connection`]).
//!
//! What is negotiated ([`negotiate`]), and why:
//!
//! - **`server_no_context_takeover`, always** (RFC 7692 7.1.1.1 lets a server add it): each
//!   server message is compressed on its own with a per-thread compressor, so a connection keeps
//!   no compressor (hundreds of KiB each) — an idle connection stays as small as without the
//!   extension. Messages under [`MIN_COMPRESS`] bytes go uncompressed (RSV1 clear), as the
//!   extension allows: deflating a heartbeat ACK only makes it longer.
//! - `server_max_window_bits=N` as offered for N in 9..=15; an offer of 8 is declined (zlib
//!   cannot write raw deflate with a 256-byte window) and the next offer is tried.
//! - The client's direction: `client_no_context_takeover` echoed when offered; otherwise the
//!   connection keeps the client's LZ77 window between messages ([`Inflater`]): a window of
//!   [`CLIENT_WINDOW_BITS`] when the client offered `client_max_window_bits` (client messages
//!   are small), 15 otherwise. Inflating itself is done by a per-thread inflater.
//! - Any offer with an unknown, repeated or malformed parameter is declined; when no offer is
//!   acceptable, the connection goes uncompressed (on axum's transport).
//!
//! Every client message inflates to at most the gateway's message limit (`--max-body-bytes`);
//! one that would inflate further closes the socket with 4002, like an oversized frame.
//! `?compression=zstd` wins over a deflate offer (the offer is then declined).

use std::cell::RefCell;

use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};

pub mod frame;
pub mod socket;

/// The extension's name.
pub const NAME: &str = "permessage-deflate";
/// Messages shorter than this go uncompressed.
pub const MIN_COMPRESS: usize = 64;
/// The deflate level of server messages (zlib's default: a good ratio at realtime speed).
pub const LEVEL: u32 = 6;
/// The LZ77 window (log2 bytes) a client that offered `client_max_window_bits` is asked to
/// keep: its messages are small, and the window is what its inflater here costs.
pub const CLIENT_WINDOW_BITS: u8 = 10;
/// The empty stored block every compressed message ends with, removed on the wire (7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What one connection agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// The server's LZ77 window, log2 bytes (9..=15).
    pub server_window_bits: u8,
    /// Whether every client message is compressed on its own.
    pub client_no_context_takeover: bool,
    /// The client's LZ77 window, log2 bytes (9..=15): the inflater's window when the client
    /// keeps its context.
    pub client_window_bits: u8,
    /// Whether `client_max_window_bits` goes in the answer.
    answer_client_window: bool,
}

impl Params {
    /// The `Sec-WebSocket-Extensions` value of the 101 answer.
    pub fn response_header(&self) -> String {
        let mut value = format!("{NAME}; server_no_context_takeover");
        if self.server_window_bits != 15 {
            value.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_window_bits
            ));
        }
        if self.client_no_context_takeover {
            value.push_str("; client_no_context_takeover");
        }
        if self.answer_client_window {
            value.push_str(&format!(
                "; client_max_window_bits={}",
                self.client_window_bits
            ));
        }
        value
    }
}

/// One extension parameter: its name and its value, if any (unquoted).
type Param = (String, Option<String>);

/// The first acceptable permessage-deflate offer among the `Sec-WebSocket-Extensions` header
/// values (RFC 7692 5: offers in the client's order of preference), as agreed parameters.
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a [u8]>) -> Option<Params> {
    headers
        .into_iter()
        .filter_map(|value| std::str::from_utf8(value).ok())
        .flat_map(split_extensions)
        .filter_map(|extension| parse_extension(extension))
        .filter(|(name, _)| name.eq_ignore_ascii_case(NAME))
        .find_map(|(_, params)| accept(&params))
}

/// One offer's parameters, as the server agrees to them; `None` declines the offer.
fn accept(params: &[Param]) -> Option<Params> {
    let mut agreed = Params {
        server_window_bits: 15,
        client_no_context_takeover: false,
        client_window_bits: 15,
        answer_client_window: false,
    };
    let mut seen: Vec<&str> = Vec::with_capacity(params.len());
    for (name, value) in params {
        let name = name.as_str();
        if seen.iter().any(|other| other.eq_ignore_ascii_case(name)) {
            return None;
        }
        seen.push(name);
        match (name.to_ascii_lowercase().as_str(), value.as_deref()) {
            ("server_no_context_takeover", None) => {}
            ("client_no_context_takeover", None) => agreed.client_no_context_takeover = true,
            ("server_max_window_bits", Some(bits)) => match window_bits(bits)? {
                8 => return None,
                bits => agreed.server_window_bits = bits,
            },
            ("client_max_window_bits", bits) => {
                let offered = match bits {
                    Some(bits) => window_bits(bits)?,
                    None => 15,
                };
                // Never more than offered; the inflater reads it with at least 9 (a larger
                // window reads any smaller one).
                agreed.client_window_bits = CLIENT_WINDOW_BITS.min(offered);
                agreed.answer_client_window = true;
            }
            _ => return None,
        }
    }
    if agreed.client_no_context_takeover {
        // Its messages inflate with a per-thread inflater of the full window: nothing to save.
        agreed.client_window_bits = 15;
        agreed.answer_client_window = false;
    }
    Some(agreed)
}

/// A window size parameter: 1*DIGIT without leading zeros, 8..=15 (RFC 7692 7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value
        .parse::<u8>()
        .ok()
        .filter(|bits| (8..=15).contains(bits))
}

/// A header value split at the commas between extensions (not those inside quoted strings).
fn split_extensions(value: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, byte) in value.bytes().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                parts.push(&value[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts.into_iter().filter(|part| !part.trim().is_empty())
}

/// `name; param[=value]; ...` as the name and its parameters (quoted values unquoted);
/// `None` when malformed.
fn parse_extension(extension: &str) -> Option<(&str, Vec<Param>)> {
    let mut pieces = extension.split(';');
    let name = pieces.next()?.trim();
    if !is_token(name) {
        return None;
    }
    let mut params = Vec::new();
    for piece in pieces {
        let (key, value) = match piece.split_once('=') {
            Some((key, value)) => (key.trim(), Some(value.trim())),
            None => (piece.trim(), None),
        };
        if !is_token(key) {
            return None;
        }
        let value = match value {
            None => None,
            Some(value) => Some(unquote(value)?),
        };
        params.push((key.to_owned(), value));
    }
    Some((name, params))
}

/// A token, or a quoted string holding one (RFC 6455 9.1: the unquoted value must be a token).
fn unquote(value: &str) -> Option<String> {
    let inner = match value.strip_prefix('"') {
        Some(rest) => {
            let rest = rest.strip_suffix('"')?;
            let mut out = String::with_capacity(rest.len());
            let mut chars = rest.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' { chars.next()? } else { c });
            }
            out
        }
        None => value.to_owned(),
    };
    is_token(&inner).then_some(inner)
}

fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

thread_local! {
    // Per worker thread: a compressor per server window size, and one full-window inflater for
    // clients without context takeover. Each is reset before use, so nothing crosses messages.
    static COMPRESSORS: RefCell<[Option<Compress>; 7]> = const { RefCell::new([const { None }; 7]) };
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// `message` compressed on its own with a window of `window_bits` (9..=15), without the
/// trailing empty block; `None` if deflate fails (the caller then sends it uncompressed).
pub fn compress(message: &[u8], window_bits: u8) -> Option<Vec<u8>> {
    let bits = window_bits.clamp(9, 15);
    COMPRESSORS.with(|compressors| {
        let mut compressors = compressors.try_borrow_mut().ok()?;
        let compressor = match &mut compressors[usize::from(bits - 9)] {
            Some(compressor) => {
                compressor.reset();
                compressor
            }
            empty => empty.insert(Compress::new_with_window_bits(
                flate2::Compression::new(LEVEL),
                false,
                bits,
            )),
        };
        let mut out = Vec::with_capacity(message.len() / 2 + 64);
        let mut at = 0;
        loop {
            let before = (compressor.total_in(), compressor.total_out());
            let status = compressor
                .compress_vec(&message[at..], &mut out, FlushCompress::Sync)
                .ok()?;
            let read = usize::try_from(compressor.total_in() - before.0).ok()?;
            at += read;
            let room_left = out.len() < out.capacity();
            if at == message.len() && (room_left || status == Status::BufError) {
                // All in, all out (a second flush with nothing new is a BufError).
                break;
            }
            if room_left && read == 0 && compressor.total_out() == before.1 {
                return None;
            }
            if !room_left {
                out.reserve(out.capacity().max(64));
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        Some(out)
    })
}

/// Why a compressed message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the message limit.
    TooLarge,
    /// Not valid deflate data.
    Corrupt,
}

/// A connection's inflater. The inflating is done by a per-thread inflater, reset for every
/// message; what a client that keeps its context needs across messages is only its LZ77
/// window (messages end on a block boundary, RFC 7692 7.2.1), so the connection keeps the
/// last `2^client_window_bits` bytes it inflated and hands them to the inflater as its
/// dictionary. That is 1 KiB for a client that offered `client_max_window_bits`, against
/// ~19 KiB for an inflater of its own (measured).
#[derive(Debug)]
pub struct Inflater {
    /// The end of what the client's compressed messages inflated to (context takeover only).
    history: Vec<u8>,
    takeover: bool,
    window: usize,
}

impl Inflater {
    /// The inflater for what was agreed.
    pub fn new(params: &Params) -> Self {
        Self {
            history: Vec::new(),
            takeover: !params.client_no_context_takeover,
            window: 1 << params.client_window_bits.clamp(9, 15),
        }
    }

    /// One compressed message (without its tail), inflated to at most `limit` bytes.
    pub fn inflate(&mut self, message: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
        let inflated = INFLATER.with(|inflater| {
            let mut inflater = inflater
                .try_borrow_mut()
                .map_err(|_| InflateError::Corrupt)?;
            let inflater =
                inflater.get_or_insert_with(|| Decompress::new_with_window_bits(false, 15));
            inflater.reset(false);
            if self.takeover && !self.history.is_empty() {
                inflater
                    .set_dictionary(&self.history)
                    .map_err(|_| InflateError::Corrupt)?;
            }
            inflate_with(inflater, message, limit)
        })?;
        if self.takeover {
            if inflated.len() >= self.window {
                self.history.clear();
                self.history
                    .extend_from_slice(&inflated[inflated.len() - self.window..]);
            } else {
                if self.history.capacity() == 0 {
                    self.history.reserve_exact(self.window);
                }
                let overflow = (self.history.len() + inflated.len()).saturating_sub(self.window);
                self.history.drain(..overflow);
                self.history.extend_from_slice(&inflated);
            }
        }
        Ok(inflated)
    }
}

/// Inflates `message` and the tail through `inflater` into at most `limit` bytes.
fn inflate_with(
    inflater: &mut Decompress,
    message: &[u8],
    limit: usize,
) -> Result<Vec<u8>, InflateError> {
    let mut out: Vec<u8> =
        Vec::with_capacity(message.len().saturating_mul(4).clamp(64, limit.max(64)));
    for input in [message, &TAIL[..]] {
        let mut at = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(InflateError::TooLarge);
                }
                // One byte past the limit is enough to know it is too large.
                let room = (limit + 1 - out.len()).min(out.len().max(1024));
                out.reserve_exact(room);
            }
            let before = (inflater.total_in(), inflater.total_out());
            let status = inflater
                .decompress_vec(&input[at..], &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            if out.len() > limit {
                return Err(InflateError::TooLarge);
            }
            let read = usize::try_from(inflater.total_in() - before.0)
                .map_err(|_| InflateError::Corrupt)?;
            at += read;
            if status == Status::StreamEnd {
                // A final block (BFINAL): the message ends there.
                return Ok(out);
            }
            let progressed = read > 0 || inflater.total_out() > before.1;
            if at == input.len() && out.len() < out.capacity() {
                break;
            }
            if !progressed && out.len() < out.capacity() {
                return Err(InflateError::Corrupt);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
