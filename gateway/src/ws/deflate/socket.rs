//! A server WebSocket with permessage-deflate, as a `Stream` and `Sink` of axum's
//! [`Message`] (what [`crate::ws::connection`] drives).
//!
//! Reading reassembles fragmented messages (at most the message limit, counted as they arrive),
//! inflates compressed ones ([`super::Inflater`]), checks that text is UTF-8, and answers pings
//! (the latest one only, RFC 6455 5.5.3) and the client's close frame. Writing compresses data
//! messages of [`super::MIN_COMPRESS`] bytes or more, each into one final frame with RSV1,
//! unless deflate would not make it shorter. A failure ends the stream: the connection then
//! closes with 4002 (as with an unreadable frame on axum's transport).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::{BufMut as _, Bytes, BytesMut};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, FramedParts};

use super::frame::{Error, Frame, OpCode, ServerCodec};
use super::{InflateError, Inflater, Params};

/// Initial read buffer: client messages are small; larger frames grow it.
const READ_BUFFER: usize = 4096;
/// Most frames one message may come in: empty continuations would otherwise keep a client's
/// bytes flowing without ever making a message the rate limiter counts.
pub const MAX_FRAGMENTS: u32 = 1024;
/// Longest close reason sent (a close payload is at most 125 bytes, 2 of them the code).
const MAX_CLOSE_REASON: usize = 123;

/// A data message being reassembled from its frames.
#[derive(Debug)]
struct Partial {
    text: bool,
    compressed: bool,
    data: BytesMut,
    frames: u32,
}

/// One upgraded connection that agreed to permessage-deflate.
#[derive(Debug)]
pub struct DeflateSocket<T> {
    framed: Framed<T, ServerCodec>,
    params: Params,
    inflater: Inflater,
    limit: usize,
    partial: Option<Partial>,
    /// A control frame the reading side owes the client: the latest pong, or the close reply.
    owed: Option<Frame>,
    needs_flush: bool,
    sent_close: bool,
    /// The stream ended (the client's close, an error, or the end of the connection).
    ended: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin> DeflateSocket<T> {
    /// The socket over `io` with what was agreed; no message (nor frame) over `limit` bytes,
    /// inflated or not.
    pub fn new(io: T, params: Params, limit: usize) -> Self {
        let mut parts = FramedParts::new::<Frame>(io, ServerCodec::new(limit, true));
        parts.read_buf = BytesMut::with_capacity(READ_BUFFER);
        // Allocated by the first message sent, not while the connection is idle.
        parts.write_buf = BytesMut::new();
        Self {
            framed: Framed::from_parts(parts),
            inflater: Inflater::new(&params),
            params,
            limit,
            partial: None,
            owed: None,
            needs_flush: false,
            sent_close: false,
            ended: false,
        }
    }

    /// Hands an owed control frame to the frame layer and flushes what it holds.
    fn poll_owed(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.owed.is_some() {
            ready!(Pin::new(&mut self.framed).poll_ready(cx))?;
            if let Some(frame) = self.owed.take() {
                Pin::new(&mut self.framed).start_send(frame)?;
                self.needs_flush = true;
            }
        }
        if self.needs_flush {
            ready!(Pin::new(&mut self.framed).poll_flush(cx))?;
            self.needs_flush = false;
        }
        Poll::Ready(Ok(()))
    }

    /// What one frame means: `Some` message to hand out, `None` to read on.
    fn on_frame(&mut self, frame: Frame) -> Result<Option<Message>, Error> {
        match frame.opcode {
            OpCode::Ping => {
                self.owed = Some(Frame::new(OpCode::Pong, false, frame.payload.clone()));
                Ok(Some(Message::Ping(frame.payload)))
            }
            OpCode::Pong => Ok(Some(Message::Pong(frame.payload))),
            OpCode::Close => {
                let close = parse_close(&frame.payload)?;
                if !self.sent_close {
                    // Echo the code (RFC 6455 5.5.1), then nothing more is sent.
                    let code = frame.payload.slice(..frame.payload.len().min(2));
                    self.owed = Some(Frame::new(OpCode::Close, false, code));
                    self.sent_close = true;
                }
                self.ended = true;
                Ok(Some(Message::Close(close)))
            }
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Err(Error::Protocol(
                        "a new message began before the fragmented one ended",
                    ));
                }
                let text = frame.opcode == OpCode::Text;
                if frame.fin {
                    return self
                        .message(text, frame.compressed, frame.payload)
                        .map(Some);
                }
                let mut data = BytesMut::with_capacity(frame.payload.len());
                data.extend_from_slice(&frame.payload);
                self.partial = Some(Partial {
                    text,
                    compressed: frame.compressed,
                    data,
                    frames: 1,
                });
                Ok(None)
            }
            OpCode::Continuation => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(Error::Protocol("a continuation frame without a message"));
                };
                if partial.data.len() + frame.payload.len() > self.limit {
                    return Err(Error::Protocol("a message longer than the message limit"));
                }
                partial.frames += 1;
                if partial.frames > MAX_FRAGMENTS {
                    return Err(Error::Protocol("a message in too many frames"));
                }
                partial.data.extend_from_slice(&frame.payload);
                if !frame.fin {
                    return Ok(None);
                }
                let Some(partial) = self.partial.take() else {
                    return Ok(None);
                };
                self.message(partial.text, partial.compressed, partial.data.freeze())
                    .map(Some)
            }
        }
    }

    /// A complete data message, inflated and checked.
    fn message(&mut self, text: bool, compressed: bool, data: Bytes) -> Result<Message, Error> {
        let data = if compressed {
            match self.inflater.inflate(&data, self.limit) {
                Ok(inflated) => Bytes::from(inflated),
                Err(InflateError::TooLarge) => {
                    return Err(Error::Protocol(
                        "a compressed message inflates past the message limit",
                    ));
                }
                Err(InflateError::Corrupt) => {
                    return Err(Error::Protocol("a compressed message is not valid deflate"));
                }
            }
        } else {
            data
        };
        if text {
            Utf8Bytes::try_from(data)
                .map(Message::Text)
                .map_err(|_| Error::Protocol("a text message that is not UTF-8"))
        } else {
            Ok(Message::Binary(data))
        }
    }

    /// The frame carrying `message`.
    fn frame_of(&self, message: Message) -> Result<Frame, Error> {
        Ok(match message {
            Message::Text(text) => self.data_frame(OpCode::Text, Bytes::from(text)),
            Message::Binary(data) => self.data_frame(OpCode::Binary, data),
            Message::Ping(data) => control(OpCode::Ping, data)?,
            Message::Pong(data) => control(OpCode::Pong, data)?,
            Message::Close(close) => Frame::new(OpCode::Close, false, close_payload(close)),
        })
    }

    fn data_frame(&self, opcode: OpCode, data: Bytes) -> Frame {
        if data.len() >= super::MIN_COMPRESS
            && let Some(compressed) = super::compress(&data, self.params.server_window_bits)
            && compressed.len() < data.len()
        {
            return Frame::new(opcode, true, Bytes::from(compressed));
        }
        Frame::new(opcode, false, data)
    }
}

fn control(opcode: OpCode, data: Bytes) -> Result<Frame, Error> {
    if data.len() > 125 {
        return Err(Error::Protocol("a control frame over 125 bytes"));
    }
    Ok(Frame::new(opcode, false, data))
}

/// A close frame's payload: the code and the reason, cut to fit at a character boundary.
fn close_payload(close: Option<CloseFrame>) -> Bytes {
    let Some(close) = close else {
        return Bytes::new();
    };
    let reason = close.reason.as_str();
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = BytesMut::with_capacity(2 + end);
    payload.put_u16(close.code);
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload.freeze()
}

/// The client's close frame (RFC 6455 5.5.1, 7.4).
fn parse_close(payload: &Bytes) -> Result<Option<CloseFrame>, Error> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(Error::Protocol("a close frame with half a code")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999) {
                return Err(Error::Protocol("a close code a client may not send"));
            }
            let reason = Utf8Bytes::try_from(payload.slice(2..))
                .map_err(|_| Error::Protocol("a close reason that is not UTF-8"))?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Stream for DeflateSocket<T> {
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // An owed pong or close reply goes out first; if the socket cannot take it now, it
        // goes with the next read or write (this task is woken when it can).
        if let Poll::Ready(Err(error)) = this.poll_owed(cx) {
            this.ended = true;
            return Poll::Ready(Some(Err(error)));
        }
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            let frame = match ready!(Pin::new(&mut this.framed).poll_next(cx)) {
                None => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Some(Err(error)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(error)));
                }
                Some(Ok(frame)) => frame,
            };
            match this.on_frame(frame) {
                Ok(None) => continue,
                Ok(Some(message)) => {
                    if this.owed.is_some() {
                        // Best effort now; a Pending registers this task for later.
                        let _ = this.poll_owed(cx);
                    }
                    return Poll::Ready(Some(Ok(message)));
                }
                Err(error) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Sink<Message> for DeflateSocket<T> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        ready!(this.poll_owed(cx))?;
        Pin::new(&mut this.framed).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), Error> {
        let this = self.get_mut();
        if this.sent_close {
            return Err(Error::Protocol("the connection is closing"));
        }
        if matches!(message, Message::Close(_)) {
            this.sent_close = true;
        }
        let frame = this.frame_of(message)?;
        Pin::new(&mut this.framed).start_send(frame)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        ready!(this.poll_owed(cx))?;
        Pin::new(&mut this.framed).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        ready!(this.poll_owed(cx))?;
        Pin::new(&mut this.framed).poll_close(cx)
    }
}
