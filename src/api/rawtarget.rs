//! Request-target repair below actix-web's HTTP parser.
//!
//! gpg sends search patterns with raw `<`, `>`, `#`, `+`, `@` and `/` in the request target
//! (`GET /pks/lookup?op=index&search=Jane%20<jane+x@example.org> HTTP/1.0`). actix-web answers
//! such a request 400 before any handler runs (the `http` crate's URI parser rejects `<` and
//! `>`), and a raw `#` silently truncates the query. [`RawTargetIo`] wraps a connection's byte
//! stream and percent-encodes, in the request line's target only, every byte that parser rejects
//! or treats specially (see [`must_encode`]). Every other byte, existing `%XX` escapes and `+`
//! included, is left alone, so percent-decoding the query once gives back exactly what the client
//! meant. Headers and bodies pass through unchanged.
//!
//! # How the stream is followed
//!
//! A small state machine ([`Framing`]) follows HTTP/1.x message framing on the read side:
//! request line (buffered, rewritten, emitted) → header lines (passed through, noting
//! `Content-Length`) → `Content-Length` body bytes (passed through) → the next keep-alive request.
//! It uses the same framing rules as actix-http's decoder, so both agree on where each request
//! starts. Whenever they could disagree, the wrapper stops rewriting and passes the rest of the
//! connection through untouched; actix-web then handles those bytes exactly as without the
//! wrapper. That happens for:
//! - `Transfer-Encoding` (chunked bodies are not followed),
//! - `Upgrade` headers and the `CONNECT` method (actix streams those until EOF),
//! - a missing, repeated or malformed `Content-Length`, a header line without `:`, an
//!   obsolete folded header line,
//! - a request line that is not `METHOD SP target SP HTTP/x`, or any line longer than
//!   [`MAX_LINE`] bytes (actix then answers 400/414 itself).
//!
//! gpg (HTTP/1.0, one GET or one `Content-Length` POST per connection) and sq never hit these.
//! The write side is not touched.
//!
//! # Common operations
//!
//! ```
//! use keyraft::api::rawtarget::rewrite_request_line;
//! let line = b"GET /pks/lookup?search=Jane%20<j@x.org> HTTP/1.0\r\n";
//! assert_eq!(
//!     rewrite_request_line(line),
//!     b"GET /pks/lookup?search=Jane%20%3Cj@x.org%3E HTTP/1.0\r\n".to_vec()
//! );
//! ```
//!
//! This module depends only on tokio's I/O traits. It must not depend on actix, on the HKP
//! handlers, or on any other keyraft layer.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest request line or header line (including its line end) that is buffered and followed.
/// A longer line is passed through unchanged and ends rewriting for the connection.
pub const MAX_LINE: usize = 16 * 1024;

/// Size of the internal read buffer.
const READ_CHUNK: usize = 8 * 1024;

/// Whether `b` must be percent-encoded in a request target before the `http` crate parses it:
/// control bytes, space, DEL, non-ASCII bytes, and `" # < > \ ^ ` { | }`.
pub fn must_encode(b: u8) -> bool {
    matches!(
        b,
        0x00..=0x20
            | 0x7F..=0xFF
            | b'"'
            | b'#'
            | b'<'
            | b'>'
            | b'\\'
            | b'^'
            | b'`'
            | b'{'
            | b'|'
            | b'}'
    )
}

/// Percent-encodes (upper-case hex) every byte of `target` for which [`must_encode`] holds.
pub fn encode_target(target: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(target.len() + 16);
    for &b in target {
        if must_encode(b) {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xF)]]);
        } else {
            out.push(b);
        }
    }
    out
}

/// Rewrites one request line (with or without its `\r\n` / `\n` line end), encoding the target.
///
/// The line must look like `METHOD SP target SP HTTP/…`; the target is everything between the
/// first and the last space, so a raw space inside it is encoded too. Any other line is returned
/// unchanged.
pub fn rewrite_request_line(line: &[u8]) -> Vec<u8> {
    match split_request_line(line) {
        Some((method, target, rest)) => {
            let mut out = Vec::with_capacity(line.len() + 16);
            out.extend_from_slice(method);
            out.push(b' ');
            out.extend_from_slice(&encode_target(target));
            out.extend_from_slice(rest);
            out
        }
        None => line.to_vec(),
    }
}

/// Splits a request line into method, target and the rest (` HTTP/x.y` plus line end).
fn split_request_line(line: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let body = strip_line_end(line);
    let first = body.iter().position(|&b| b == b' ')?;
    let last = body.iter().rposition(|&b| b == b' ')?;
    if first == 0 || last <= first + 1 || !body[last + 1..].starts_with(b"HTTP/") {
        return None;
    }
    Some((&line[..first], &line[first + 1..last], &line[last..]))
}

/// `line` without one trailing `\n` and then one trailing `\r`.
fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Where the read side currently is in the HTTP/1.x byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a request line (leading empty lines are passed through).
    RequestLine,
    /// Collecting header lines up to the blank line.
    Headers,
    /// Passing this many more body bytes through.
    Body(u64),
    /// No longer following the stream: everything passes through unchanged.
    Passthrough,
}

/// The pure read-side state machine: fed raw input bytes, it appends the bytes actix should see
/// to an output buffer. No I/O.
#[derive(Debug)]
struct Framing {
    state: State,
    /// The request or header line being collected.
    line: Vec<u8>,
    /// Facts about the request whose head is being read.
    content_length: Option<u64>,
    /// The head asks for something this machine does not follow (see module docs).
    give_up_after_head: bool,
}

impl Framing {
    fn new() -> Self {
        Framing {
            state: State::RequestLine,
            line: Vec::new(),
            content_length: None,
            give_up_after_head: false,
        }
    }

    /// Processes `input`, appending what actix should read to `out`.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match self.state {
                State::Passthrough => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Body(remaining) => {
                    let n = usize::try_from(remaining).map_or(input.len(), |r| r.min(input.len()));
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.consume_body(n);
                }
                State::RequestLine | State::Headers => {
                    let (chunk, complete) = match input.iter().position(|&b| b == b'\n') {
                        Some(p) => (&input[..=p], true),
                        None => (input, false),
                    };
                    self.line.extend_from_slice(chunk);
                    input = &input[chunk.len()..];
                    if self.line.len() > MAX_LINE {
                        out.append(&mut self.line);
                        self.state = State::Passthrough;
                    } else if complete {
                        self.complete_line(out);
                    }
                }
            }
        }
    }

    /// Records that `n` body bytes were passed through.
    fn consume_body(&mut self, n: usize) {
        if let State::Body(remaining) = self.state {
            let left = remaining.saturating_sub(n as u64);
            self.state = if left == 0 {
                State::RequestLine
            } else {
                State::Body(left)
            };
        }
    }

    /// The input ended: hands out any partially collected line unchanged.
    fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.line);
        self.state = State::Passthrough;
    }

    /// Handles the complete line in `self.line` (it ends with `\n`).
    fn complete_line(&mut self, out: &mut Vec<u8>) {
        let line = std::mem::take(&mut self.line);
        let is_blank = strip_line_end(&line).is_empty();
        match self.state {
            State::RequestLine if is_blank => out.extend_from_slice(&line),
            State::RequestLine => match split_request_line(&line) {
                Some((method, _, _)) => {
                    self.content_length = None;
                    self.give_up_after_head = method == b"CONNECT";
                    out.extend_from_slice(&rewrite_request_line(&line));
                    self.state = State::Headers;
                }
                None => {
                    out.extend_from_slice(&line);
                    self.state = State::Passthrough;
                }
            },
            State::Headers if is_blank => {
                out.extend_from_slice(&line);
                self.state = match self.content_length {
                    _ if self.give_up_after_head => State::Passthrough,
                    Some(n) if n > 0 => State::Body(n),
                    _ => State::RequestLine,
                };
            }
            State::Headers => {
                self.note_header(strip_line_end(&line));
                out.extend_from_slice(&line);
            }
            State::Body(_) | State::Passthrough => out.extend_from_slice(&line),
        }
        self.line = line;
        self.line.clear();
    }

    /// Notes what one header line (without line end) means for framing.
    fn note_header(&mut self, header: &[u8]) {
        let Some(colon) = header.iter().position(|&b| b == b':') else {
            self.give_up_after_head = true;
            return;
        };
        let name = &header[..colon];
        let value = header[colon + 1..].trim_ascii();
        if name.first().is_none_or(|b| b.is_ascii_whitespace()) {
            // Obsolete line folding or an empty name: actix rejects it; don't guess.
            self.give_up_after_head = true;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let parsed = (!value.is_empty() && value.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(value).ok()?.parse::<u64>().ok())
                .flatten();
            match (self.content_length, parsed) {
                (None, Some(n)) => self.content_length = Some(n),
                _ => self.give_up_after_head = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            self.give_up_after_head = true;
        }
    }
}

/// A connection wrapper that percent-encodes unsafe bytes in each request target before actix
/// reads it (see the module docs). Writes go straight to the inner stream.
#[derive(Debug)]
pub struct RawTargetIo<T> {
    inner: T,
    framing: Framing,
    /// Bytes ready for the reader, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    /// Buffer for reads from `inner` while a line is being followed.
    scratch: Vec<u8>,
    /// `inner` reported end of stream.
    eof: bool,
}

impl<T> RawTargetIo<T> {
    /// Wraps a fresh connection (nothing read from it yet).
    pub fn new(inner: T) -> Self {
        RawTargetIo {
            inner,
            framing: Framing::new(),
            out: Vec::new(),
            out_pos: 0,
            scratch: Vec::new(),
            eof: false,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The wrapped stream, mutably. Reading from it directly desynchronises the wrapper.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Copies pending output into `buf`; returns whether anything was pending.
    fn drain_into(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.out_pos >= self.out.len() {
            return false;
        }
        let n = buf.remaining().min(self.out.len() - self.out_pos);
        buf.put_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        true
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for RawTargetIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if buf.remaining() == 0 || this.drain_into(buf) || this.eof {
                return Poll::Ready(Ok(()));
            }
            match this.framing.state {
                State::Passthrough => return Pin::new(&mut this.inner).poll_read(cx, buf),
                State::Body(remaining) => {
                    // Body bytes go straight into the caller's buffer, at most up to the body end.
                    let limit = usize::try_from(remaining)
                        .map_or(buf.remaining(), |r| r.min(buf.remaining()));
                    let mut body = ReadBuf::new(buf.initialize_unfilled_to(limit));
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut body))?;
                    let n = body.filled().len();
                    buf.advance(n);
                    if n == 0 {
                        this.eof = true;
                    }
                    this.framing.consume_body(n);
                    return Poll::Ready(Ok(()));
                }
                State::RequestLine | State::Headers => {
                    this.scratch.resize(READ_CHUNK, 0);
                    let mut raw = ReadBuf::new(&mut this.scratch);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut raw))?;
                    let n = raw.filled().len();
                    if n == 0 {
                        this.eof = true;
                        this.framing.finish(&mut this.out);
                    } else {
                        this.framing.feed(&this.scratch[..n], &mut this.out);
                    }
                    // Loop: hand out what was produced, or read more if only a partial line
                    // was buffered (the inner read registers the waker if it returns Pending).
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for RawTargetIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
#[path = "rawtarget_tests.rs"]
mod tests;
