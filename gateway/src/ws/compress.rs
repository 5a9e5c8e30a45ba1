//! zstd on the WebSocket gateway (spec 3.6: "zstd must be offered on gateway server").
//!
//! The spec leaves the negotiation open; ours: a client that connects to
//! `GET /.p2/core/v1/gateway?compression=zstd` gets every server message as a **binary** frame
//! holding one complete zstd frame of the message's JSON text (so each message decompresses on
//! its own: nothing to keep per connection, which keeps an idle connection small). Messages
//! of [`LARGE`] bytes or more (a Resumed replay, a heartbeat ACK re-sending events) are
//! compressed at [`LARGE_LEVEL`], the rest at [`LEVEL`] (the spec recommends 5–13 for
//! realtime, higher for events like Resumed). Such a client may send zstd frames too (binary,
//! starting with zstd's magic number), inflated to at most the gateway's message size limit,
//! or plain JSON as text or binary. Without the parameter, everything stays uncompressed
//! text, or permessage-deflate when the client offers it ([`super::deflate`]; zstd wins when
//! both are asked for).

use std::cell::RefCell;

/// The level of ordinary messages.
pub const LEVEL: i32 = 5;
/// The level of large messages.
pub const LARGE_LEVEL: i32 = 13;
/// From this many bytes of JSON on, a message counts as large.
pub const LARGE: usize = 16 * 1024;
/// The first four bytes of every zstd frame.
const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// How one connection's messages are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Text frames of JSON.
    #[default]
    None,
    /// Binary frames of zstd-compressed JSON; inbound zstd frames inflate to at most
    /// `max_inflated` bytes.
    Zstd {
        /// The gateway's message size limit.
        max_inflated: usize,
    },
}

impl Compression {
    /// The compression a `compression` query parameter asks for (absent or `none`: none;
    /// `zstd`, any case: zstd); `None` for anything else (the upgrade is refused with 400).
    pub fn requested(value: Option<&str>, max_inflated: usize) -> Option<Self> {
        match value.map(str::trim) {
            None | Some("") => Some(Self::None),
            Some(value) if value.eq_ignore_ascii_case("none") => Some(Self::None),
            Some(value) if value.eq_ignore_ascii_case("zstd") => Some(Self::Zstd { max_inflated }),
            Some(_) => None,
        }
    }
}

thread_local! {
    // One context per worker thread and level: creating one per message would allocate
    // about a megabyte each time.
    static COMPRESSORS: RefCell<[Option<zstd::bulk::Compressor<'static>>; 2]> =
        const { RefCell::new([None, None]) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// `text` as one zstd frame (at [`LARGE_LEVEL`] from [`LARGE`] bytes on); `None` only if zstd
/// itself fails (the caller then sends it uncompressed).
pub fn compress(text: &[u8]) -> Option<Vec<u8>> {
    let (slot, level) = if text.len() >= LARGE {
        (1, LARGE_LEVEL)
    } else {
        (0, LEVEL)
    };
    COMPRESSORS.with(|compressors| {
        let mut compressors = compressors.try_borrow_mut().ok()?;
        let compressor = match &mut compressors[slot] {
            Some(compressor) => compressor,
            empty => empty.insert(zstd::bulk::Compressor::new(level).ok()?),
        };
        compressor.compress(text).ok()
    })
}

/// Whether `bytes` is a zstd frame (rather than JSON, which never starts with these bytes).
pub fn is_zstd(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// Inflates a client's zstd frame to at most `max` bytes; `None` when it is malformed or
/// larger (the connection then closes with 4002 like any unreadable message).
pub fn decompress(bytes: &[u8], max: usize) -> Option<Vec<u8>> {
    DECOMPRESSOR.with(|decompressor| {
        let mut decompressor = decompressor.try_borrow_mut().ok()?;
        let decompressor = match &mut *decompressor {
            Some(decompressor) => decompressor,
            empty => empty.insert(zstd::bulk::Decompressor::new().ok()?),
        };
        decompressor.decompress(bytes, max).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_large_ones_compress_harder() {
        let small = br#"{"n":"core","op":"7","d":[],"s":"3"}"#;
        let frame = compress(small).unwrap();
        assert!(is_zstd(&frame));
        assert_eq!(decompress(&frame, 1024).unwrap(), small);
        let large = "{\"n\":\"core\",\"op\":\"3\",\"d\":{\"cert\":\"MIIB...\"}}".repeat(1000);
        let frame = compress(large.as_bytes()).unwrap();
        assert!(frame.len() * 20 < large.len(), "{} bytes", frame.len());
        assert_eq!(decompress(&frame, large.len()).unwrap(), large.as_bytes());
    }

    #[test]
    fn inflating_is_bounded_and_garbage_is_refused() {
        let bomb = compress(&vec![b' '; 1 << 20]).unwrap();
        assert!(bomb.len() < 1024);
        assert!(decompress(&bomb, 64 * 1024).is_none());
        assert!(decompress(&[0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3], 1024).is_none());
        assert!(!is_zstd(b"{\"op\":\"2\"}"));
    }

    #[test]
    fn the_query_parameter_picks_the_compression() {
        assert_eq!(Compression::requested(None, 10), Some(Compression::None));
        assert_eq!(
            Compression::requested(Some("ZSTD"), 10),
            Some(Compression::Zstd { max_inflated: 10 })
        );
        assert_eq!(
            Compression::requested(Some("none"), 10),
            Some(Compression::None)
        );
        assert_eq!(Compression::requested(Some("deflate"), 10), None);
    }
}
