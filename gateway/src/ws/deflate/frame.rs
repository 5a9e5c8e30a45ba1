//! RFC 6455 frames as a server reads and writes them: client frames must be masked, server
//! frames are not; RSV1 is allowed only where permessage-deflate gives it a meaning (the first
//! frame of a data message), RSV2 and RSV3 never; control frames are final and at most 125
//! bytes; no frame is longer than the gateway's message limit (refused from its header, before
//! its payload is buffered).

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Frame opcodes (RFC 6455 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// A continuation of a fragmented message.
    Continuation,
    /// The first frame of a text message.
    Text,
    /// The first frame of a binary message.
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, Ping or Pong.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// One frame, unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN: the last frame of its message.
    pub fin: bool,
    /// RSV1: with permessage-deflate, the message is compressed.
    pub compressed: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// The payload.
    pub payload: Bytes,
}

impl Frame {
    /// A final frame.
    pub fn new(opcode: OpCode, compressed: bool, payload: Bytes) -> Self {
        Self {
            fin: true,
            compressed,
            opcode,
            payload,
        }
    }
}

/// Why the client's bytes are not a frame this server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// An opcode RFC 6455 reserves.
    UnknownOpcode,
    /// RSV2/RSV3, or RSV1 where no extension gives it a meaning.
    ReservedBits,
    /// A client frame without a mask.
    Unmasked,
    /// A fragmented control frame, or one over 125 bytes.
    BadControlFrame,
    /// Longer than the message limit.
    TooLarge,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::UnknownOpcode => "reserved opcode",
            Self::ReservedBits => "reserved bits set",
            Self::Unmasked => "unmasked client frame",
            Self::BadControlFrame => "fragmented or oversized control frame",
            Self::TooLarge => "frame longer than the message limit",
        })
    }
}

/// An error of the transport: the client's bytes, or the connection.
#[derive(Debug)]
pub enum Error {
    /// A frame (or a message made of frames) the server does not accept.
    Protocol(&'static str),
    /// The frame layer refused the bytes.
    Frame(FrameError),
    /// The connection failed.
    Io(std::io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Protocol(why) => f.write_str(why),
            Self::Frame(error) => error.fmt(f),
            Self::Io(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

impl From<FrameError> for Error {
    fn from(error: FrameError) -> Self {
        Self::Frame(error)
    }
}

/// The server's frame codec.
#[derive(Debug, Clone)]
pub struct ServerCodec {
    /// Longest payload accepted.
    max_payload: usize,
    /// Whether RSV1 may be set (permessage-deflate was agreed).
    rsv1_allowed: bool,
}

impl ServerCodec {
    /// A codec refusing payloads over `max_payload` bytes; RSV1 allowed when `rsv1_allowed`.
    pub fn new(max_payload: usize, rsv1_allowed: bool) -> Self {
        Self {
            max_payload,
            rsv1_allowed,
        }
    }
}

impl Decoder for ServerCodec {
    type Item = Frame;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Error> {
        let (first, second) = match src.get(..2) {
            Some(&[first, second]) => (first, second),
            _ => return Ok(None),
        };
        let fin = first & 0x80 != 0;
        let rsv1 = first & 0x40 != 0;
        if first & 0x30 != 0 {
            return Err(FrameError::ReservedBits.into());
        }
        let opcode = OpCode::from_bits(first & 0x0F).ok_or(FrameError::UnknownOpcode)?;
        if rsv1 && (!self.rsv1_allowed || opcode.is_control() || opcode == OpCode::Continuation) {
            return Err(FrameError::ReservedBits.into());
        }
        if second & 0x80 == 0 {
            return Err(FrameError::Unmasked.into());
        }
        let (length, header) = match second & 0x7F {
            126 => match src.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                _ => return Ok(None),
            },
            127 => match src
                .get(2..10)
                .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
            {
                Some(bytes) => (u64::from_be_bytes(bytes), 10),
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        if opcode.is_control() && (!fin || length > 125) {
            return Err(FrameError::BadControlFrame.into());
        }
        let length = usize::try_from(length)
            .ok()
            .filter(|length| *length <= self.max_payload)
            .ok_or(FrameError::TooLarge)?;
        let total = header + 4 + length;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let Some(mask) = src
            .get(header..header + 4)
            .and_then(|m| <[u8; 4]>::try_from(m).ok())
        else {
            return Ok(None);
        };
        src.advance(header + 4);
        let mut payload = src.split_to(length);
        unmask(&mut payload, mask);
        Ok(Some(Frame {
            fin,
            compressed: rsv1,
            opcode,
            payload: payload.freeze(),
        }))
    }
}

/// XORs `payload` with the client's masking key (RFC 6455 5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let mut bytes = [0; 4];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u32::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask) {
        *byte ^= key;
    }
}

impl Encoder<Frame> for ServerCodec {
    type Error = Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), Error> {
        let length = frame.payload.len();
        dst.reserve(10 + length);
        dst.put_u8(
            u8::from(frame.fin) << 7 | u8::from(frame.compressed) << 6 | frame.opcode.bits(),
        );
        match length {
            0..=125 => dst.put_u8(length as u8),
            126..=0xFFFF => {
                dst.put_u8(126);
                dst.put_u16(length as u16);
            }
            _ => {
                dst.put_u8(127);
                dst.put_u64(length as u64);
            }
        }
        dst.extend_from_slice(&frame.payload);
        Ok(())
    }
}
