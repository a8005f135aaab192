//! A strict, passive check of HTTP/1 request framing, run on the raw bytes of a connection
//! beside hyper's own parser.
//!
//! hyper is lenient where RFC 9112 allows it: it accepts a bare LF as a line end and, given
//! both `Transfer-Encoding: chunked` and `Content-Length`, silently drops the length. A proxy
//! that forwards such a request is the classic request-smuggling gap, so Sanctum refuses
//! every request that is ambiguous about where it ends — it never reaches a handler.
//!
//! [`HeadGuard`] sees the same bytes hyper reads (the server wraps each connection's stream),
//! tracks the framing of every request on the connection (heads, `Content-Length` bodies,
//! chunked bodies and trailers) and queues one verdict per request head. The server pops the
//! verdict for each request hyper hands it; since hyper needs the whole head before it can
//! call the service, the verdict is always there first. The guard only accepts heads that
//! hyper frames identically, so both parsers stay aligned on keep-alive connections.
//!
//! Cost: one pass over head bytes (a few KiB per request, copied once into a reused line
//! buffer) and O(1) per read for body bytes, which are skipped by count.

use std::collections::VecDeque;

use thiserror::Error;

/// Why a request head was refused. Messages say what was wrong; none echoes header values.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeadError {
    #[error("a line of the request ends in a bare LF; HTTP/1.1 lines must end in CRLF")]
    BareLf,
    #[error("a line of the request contains a bare CR")]
    BareCr,
    #[error("the request uses obsolete header line folding (a line starting with a space or tab)")]
    ObsFold,
    #[error("the request line is malformed; expected 'METHOD TARGET HTTP/1.1'")]
    RequestLine,
    #[error("a header line is malformed (no colon, an invalid name, or space before the colon)")]
    HeaderLine,
    #[error("a header value contains a control character")]
    ControlChar,
    #[error(
        "the request has both Content-Length and Transfer-Encoding, so its length is ambiguous"
    )]
    LengthAndChunked,
    #[error("the request has several Content-Length headers with different values")]
    ConflictingLength,
    #[error("the request's Content-Length is not a decimal number")]
    InvalidLength,
    #[error(
        "the request's Transfer-Encoding is not exactly 'chunked'; no other coding is supported"
    )]
    UnsupportedCoding,
    #[error("HTTP/1.0 requests cannot use Transfer-Encoding")]
    ChunkedHttp10,
    #[error("the request head is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the chunked request body is malformed")]
    ChunkFraming,
    #[error("the request head was not seen by the framing check")]
    Unseen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a request head, line by line.
    Head,
    /// Skipping a `Content-Length` body: bytes left.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data: bytes left.
    ChunkData(u64),
    /// Expecting the CRLF after chunk data.
    ChunkEnd,
    /// Reading trailer lines after the last chunk.
    Trailers,
    /// A framing error was found: nothing after it can be trusted.
    Poisoned,
}

/// Tracks the framing of the requests on one connection and decides, per request head,
/// whether it is unambiguous. Feed it every byte read from the client, in order, with
/// [`HeadGuard::feed`]; take one verdict per request with [`HeadGuard::next_verdict`].
#[derive(Debug)]
pub struct HeadGuard {
    max_head: usize,
    state: State,
    line: Vec<u8>,
    head_len: usize,
    seen_request_line: bool,
    http10: bool,
    content_length: Option<u64>,
    chunked: bool,
    transfer_encoding: bool,
    verdicts: VecDeque<Result<(), HeadError>>,
    poison: Option<HeadError>,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

impl HeadGuard {
    /// A guard that refuses heads (request line and headers, CRLFs included) larger than
    /// `max_head` bytes.
    pub fn new(max_head: usize) -> Self {
        Self {
            max_head,
            state: State::Head,
            line: Vec::new(),
            head_len: 0,
            seen_request_line: false,
            http10: false,
            content_length: None,
            chunked: false,
            transfer_encoding: false,
            verdicts: VecDeque::new(),
            poison: None,
        }
    }

    /// The verdict on the next request head, in connection order. `Err` also when the
    /// guard has not seen a head (which means the parsers disagree: refuse, never guess).
    pub fn next_verdict(&mut self) -> Result<(), HeadError> {
        match self.verdicts.pop_front() {
            Some(verdict) => verdict,
            None => Err(self.poison.clone().unwrap_or(HeadError::Unseen)),
        }
    }

    /// True once a framing error has been found on this connection.
    pub fn is_poisoned(&self) -> bool {
        self.poison.is_some()
    }

    /// Feeds the next bytes read from the client.
    pub fn feed(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            match self.state {
                State::Poisoned => return,
                State::Body(left) | State::ChunkData(left) => {
                    let n = (input.len() as u64).min(left);
                    input = &input[n as usize..];
                    let left = left - n;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), _) => State::Body(left),
                        (_, 0) => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                }
                State::Head | State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let (part, rest, complete) = match input.iter().position(|&b| b == b'\n') {
                        Some(i) => (&input[..i], &input[i + 1..], true),
                        None => (input, &input[input.len()..], false),
                    };
                    input = rest;
                    self.head_len += part.len() + usize::from(complete);
                    if self.head_len > self.max_head {
                        self.fail(HeadError::TooLarge(self.max_head));
                        return;
                    }
                    self.line.extend_from_slice(part);
                    if complete {
                        let mut line = std::mem::take(&mut self.line);
                        let result = self.complete_line(&line);
                        line.clear();
                        self.line = line;
                        if let Err(e) = result {
                            self.fail(e);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn fail(&mut self, error: HeadError) {
        if matches!(self.state, State::Head) {
            self.verdicts.push_back(Err(error.clone()));
        }
        self.poison = Some(error);
        self.state = State::Poisoned;
        self.line = Vec::new();
    }

    /// Handles one line (the bytes before its LF).
    fn complete_line(&mut self, raw: &[u8]) -> Result<(), HeadError> {
        let line = raw.strip_suffix(b"\r").ok_or(HeadError::BareLf)?;
        if line.contains(&b'\r') {
            return Err(HeadError::BareCr);
        }
        match self.state {
            State::Head => self.head_line(line),
            State::ChunkSize => {
                let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                if digits == 0 || digits > 15 {
                    return Err(HeadError::ChunkFraming);
                }
                let after = trim_ows(&line[digits..]);
                if !(after.is_empty() || after[0] == b';') || has_ctl(after) {
                    return Err(HeadError::ChunkFraming);
                }
                let text =
                    std::str::from_utf8(&line[..digits]).map_err(|_| HeadError::ChunkFraming)?;
                let size = u64::from_str_radix(text, 16).map_err(|_| HeadError::ChunkFraming)?;
                self.state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
                self.head_len = 0;
                Ok(())
            }
            State::ChunkEnd => {
                if !line.is_empty() {
                    return Err(HeadError::ChunkFraming);
                }
                self.state = State::ChunkSize;
                self.head_len = 0;
                Ok(())
            }
            State::Trailers => {
                if line.is_empty() {
                    self.state = State::Head;
                    self.head_len = 0;
                    return Ok(());
                }
                field_line(line).map(|_| ())
            }
            State::Body(_) | State::ChunkData(_) | State::Poisoned => Ok(()),
        }
    }

    fn head_line(&mut self, line: &[u8]) -> Result<(), HeadError> {
        if !self.seen_request_line {
            // RFC 9112 §2.2: empty lines before the request line are ignored (so does hyper).
            if !line.is_empty() {
                self.http10 = request_line(line)?;
                self.seen_request_line = true;
            }
            return Ok(());
        }
        if line.is_empty() {
            return self.end_of_head();
        }
        let (name, value) = field_line(line)?;
        if name.eq_ignore_ascii_case(b"content-length") {
            if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::InvalidLength);
            }
            // 19 decimal digits always fit in a u64.
            let len = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            match self.content_length {
                Some(prev) if prev != len => return Err(HeadError::ConflictingLength),
                _ => self.content_length = Some(len),
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = true;
            for coding in value.split(|&b| b == b',') {
                let coding = trim_ows(coding);
                if !coding.eq_ignore_ascii_case(b"chunked") || self.chunked {
                    return Err(HeadError::UnsupportedCoding);
                }
                self.chunked = true;
            }
        }
        Ok(())
    }

    fn end_of_head(&mut self) -> Result<(), HeadError> {
        if self.transfer_encoding {
            if self.content_length.is_some() {
                return Err(HeadError::LengthAndChunked);
            }
            if self.http10 {
                return Err(HeadError::ChunkedHttp10);
            }
        }
        self.state = if self.chunked {
            State::ChunkSize
        } else {
            match self.content_length {
                Some(n) if n > 0 => State::Body(n),
                _ => State::Head,
            }
        };
        self.verdicts.push_back(Ok(()));
        self.head_len = 0;
        self.seen_request_line = false;
        self.http10 = false;
        self.content_length = None;
        self.chunked = false;
        self.transfer_encoding = false;
        Ok(())
    }
}

fn has_ctl(s: &[u8]) -> bool {
    s.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// `METHOD SP TARGET SP HTTP/1.x`; returns whether the version is 1.0.
fn request_line(line: &[u8]) -> Result<bool, HeadError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::RequestLine);
    };
    if method.is_empty()
        || !method.iter().all(|&b| is_tchar(b))
        || target.is_empty()
        || target.iter().any(|&b| b <= b' ' || b == 0x7f)
    {
        return Err(HeadError::RequestLine);
    }
    match version {
        b"HTTP/1.1" => Ok(false),
        b"HTTP/1.0" => Ok(true),
        _ => Err(HeadError::RequestLine),
    }
}

/// `name ":" OWS value OWS`, strictly: no folding, no space before the colon.
fn field_line(line: &[u8]) -> Result<(&[u8], &[u8]), HeadError> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(HeadError::ObsFold);
    }
    let colon = line.iter().position(|&b| b == b':').ok_or(HeadError::HeaderLine)?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(HeadError::HeaderLine);
    }
    let value = trim_ows(&line[colon + 1..]);
    if has_ctl(value) {
        return Err(HeadError::ControlChar);
    }
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(input: &[u8]) -> Vec<Result<(), HeadError>> {
        let mut g = HeadGuard::new(64 * 1024);
        g.feed(input);
        std::iter::from_fn(|| g.verdicts.pop_front()).collect()
    }

    #[test]
    fn keep_alive_sequence_with_bodies() {
        let input = b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n\r\n\r\nGET / HT\r\n\
POST /a HTTP/1.1\r\ntransfer-encoding: Chunked\r\n\r\n4;ext=1\r\n\r\n\r\n\r\n0\r\nx-trailer: 1\r\n\r\n\
HEAD / HTTP/1.1\r\n\r\n";
        assert_eq!(verdicts(input), vec![Ok(()), Ok(()), Ok(())]);
    }

    #[test]
    fn smuggling_is_refused() {
        let cases: &[(&[u8], HeadError)] = &[
            (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::LengthAndChunked),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", HeadError::LengthAndChunked),
            (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", HeadError::ConflictingLength),
            (b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n", HeadError::InvalidLength),
            (b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n", HeadError::InvalidLength),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", HeadError::UnsupportedCoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::UnsupportedCoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n", HeadError::UnsupportedCoding),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::ChunkedHttp10),
            (b"POST / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", HeadError::ObsFold),
            (b"POST / HTTP/1.1\nHost: x\r\n\r\n", HeadError::BareLf),
            (b"POST / HTTP/1.1\r\nX: a\nTransfer-Encoding: chunked\r\n\r\n", HeadError::BareLf),
            (b"POST / HTTP/1.1\r\nX: a\rb\r\n\r\n", HeadError::BareCr),
            (b"POST / HTTP/1.1\r\nContent-Length : 3\r\n\r\n", HeadError::HeaderLine),
            (b"POST / HTTP/1.1\r\nX: a\x00b\r\n\r\n", HeadError::ControlChar),
            (b"POST  / HTTP/1.1\r\n\r\n", HeadError::RequestLine),
            (b"POST / HTTP/2.0\r\n\r\n", HeadError::RequestLine),
        ];
        for (input, want) in cases {
            assert_eq!(
                verdicts(input),
                vec![Err(want.clone())],
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn chunk_framing_errors_poison_later_requests() {
        let mut g = HeadGuard::new(1024);
        g.feed(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\n\r\n",
        );
        assert_eq!(g.next_verdict(), Ok(()));
        assert!(g.is_poisoned());
        assert_eq!(g.next_verdict(), Err(HeadError::ChunkFraming));
    }

    #[test]
    fn oversized_head() {
        let mut g = HeadGuard::new(64);
        g.feed(b"GET / HTTP/1.1\r\nX: ");
        g.feed(&[b'a'; 100]);
        assert_eq!(g.next_verdict(), Err(HeadError::TooLarge(64)));
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let input = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut g = HeadGuard::new(1024);
        for b in input {
            g.feed(std::slice::from_ref(b));
        }
        assert_eq!(g.next_verdict(), Ok(()));
        assert_eq!(g.next_verdict(), Err(HeadError::LengthAndChunked));
    }
}

#[cfg(test)]
#[path = "guard_props.rs"]
mod props;
