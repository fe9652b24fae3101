//! HTTP/1.1 message framing (RFC 9112 section 6): where a message body ends, read from the
//! head that httparse parsed, and a chunked-coding scanner that finds the end of a chunked body
//! and counts its data bytes without decoding it into a new buffer. Used by the destination's
//! framing pass (`inbound_h1`), which relays messages as bytes.

use httparse::Header;

/// How the body of a message ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (0: no body).
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
    /// A response delimited by the connection's close.
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("a request Transfer-Encoding that does not end with chunked")]
    TransferEncoding,
    #[error("malformed chunked body")]
    Chunk,
}

/// What the head of a message says about its connection and its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadFacts {
    /// Transfer-Encoding's last coding is chunked.
    pub chunked: bool,
    /// Transfer-Encoding present (with any codings).
    pub transfer_encoding: bool,
    pub content_length: Option<u64>,
    /// `Connection: close`.
    pub close: bool,
    /// `Connection: keep-alive` (what keeps an HTTP/1.0 connection open).
    pub keep_alive: bool,
    /// `Connection: upgrade`.
    pub upgrade: bool,
}

fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(|t| t.trim_ascii())
}

pub fn facts(headers: &[Header<'_>]) -> Result<HeadFacts, FramingError> {
    let mut f = HeadFacts::default();
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            // Several values (or headers) are allowed only when they agree.
            for t in tokens(h.value) {
                let n = std::str::from_utf8(t)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or(FramingError::ContentLength)?;
                if f.content_length.is_some_and(|m| m != n) {
                    return Err(FramingError::ContentLength);
                }
                f.content_length = Some(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            f.transfer_encoding = true;
            // Only the last coding counts: chunked must be last when present.
            if let Some(last) = tokens(h.value).filter(|t| !t.is_empty()).last() {
                f.chunked = last.eq_ignore_ascii_case(b"chunked");
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                f.close |= t.eq_ignore_ascii_case(b"close");
                f.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                f.upgrade |= t.eq_ignore_ascii_case(b"upgrade");
            }
        }
    }
    Ok(f)
}

/// A request's body: chunked, else Content-Length, else none. A Transfer-Encoding that does not
/// end with chunked cannot be framed (RFC 9112 6.3: answer 400 and close).
pub fn request_body(f: &HeadFacts) -> Result<Framing, FramingError> {
    match (f.transfer_encoding, f.chunked) {
        (true, true) => Ok(Framing::Chunked),
        (true, false) => Err(FramingError::TransferEncoding),
        (false, _) => Ok(Framing::Length(f.content_length.unwrap_or(0))),
    }
}

/// A response's body, given the request's method and the status.
pub fn response_body(f: &HeadFacts, head_request: bool, status: u16) -> Framing {
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Framing::Length(0);
    }
    match (f.transfer_encoding, f.chunked, f.content_length) {
        (true, true, _) => Framing::Chunked,
        (true, false, _) => Framing::UntilClose,
        (false, _, Some(n)) => Framing::Length(n),
        (false, _, None) => Framing::UntilClose,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    Size {
        value: u64,
        digits: u8,
    },
    /// After the size: extensions (or whitespace) up to CR.
    Extension {
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Follows a chunked body through the bytes it is fed.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    /// Chunk data bytes seen (the body's decoded length).
    pub data_bytes: u64,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        ChunkedScanner {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            data_bytes: 0,
        }
    }
}

impl ChunkedScanner {
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes bytes of `input` up to the body's end; returns how many belong to the body.
    pub fn scan(&mut self, input: &[u8]) -> Result<usize, FramingError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::Done => return Ok(i),
                State::Size { value, digits } => match (b as char).to_digit(16) {
                    Some(d) => {
                        // 16 hex digits overflow nothing but are absurd; refuse more.
                        if digits >= 15 {
                            return Err(FramingError::Chunk);
                        }
                        State::Size {
                            value: value * 16 + u64::from(d),
                            digits: digits + 1,
                        }
                    }
                    None if digits == 0 => return Err(FramingError::Chunk),
                    None if b == b'\r' => State::SizeLf { value },
                    None if b == b';' || b == b' ' || b == b'\t' => State::Extension { value },
                    None => return Err(FramingError::Chunk),
                },
                State::Extension { value } => match b {
                    b'\r' => State::SizeLf { value },
                    b'\n' => return Err(FramingError::Chunk),
                    _ => State::Extension { value },
                },
                State::SizeLf { value } => match (b, value) {
                    (b'\n', 0) => State::TrailerStart,
                    (b'\n', left) => State::Data { left },
                    _ => return Err(FramingError::Chunk),
                },
                State::Data { left } => {
                    let take = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.data_bytes += take as u64;
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                    continue;
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size {
                    value: 0,
                    digits: 0,
                },
                State::DataCr | State::DataLf => return Err(FramingError::Chunk),
                State::TrailerStart => match b {
                    b'\r' => State::EndLf,
                    b'\n' => return Err(FramingError::Chunk),
                    _ => State::TrailerLine,
                },
                State::TrailerLine => match b {
                    b'\r' => State::TrailerLf,
                    _ => State::TrailerLine,
                },
                State::TrailerLf if b == b'\n' => State::TrailerStart,
                State::EndLf if b == b'\n' => State::Done,
                State::TrailerLf | State::EndLf => return Err(FramingError::Chunk),
            };
            i += 1;
            if self.state == State::Done {
                return Ok(i);
            }
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(name: &'a str, value: &'a str) -> Header<'a> {
        Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn request_framing_follows_rfc_9112() {
        let f = facts(&[h("Content-Length", "12")]).unwrap();
        assert_eq!(request_body(&f), Ok(Framing::Length(12)));
        assert_eq!(request_body(&facts(&[]).unwrap()), Ok(Framing::Length(0)));
        let f = facts(&[
            h("transfer-encoding", "gzip, chunked"),
            h("content-length", "3"),
        ]);
        assert_eq!(request_body(&f.unwrap()), Ok(Framing::Chunked));
        let f = facts(&[h("Transfer-Encoding", "chunked, gzip")]).unwrap();
        assert_eq!(request_body(&f), Err(FramingError::TransferEncoding));
        assert_eq!(
            facts(&[h("content-length", "1, 2")]),
            Err(FramingError::ContentLength)
        );
        assert_eq!(
            facts(&[h("content-length", "5"), h("content-length", "5")])
                .unwrap()
                .content_length,
            Some(5)
        );
        for bad in ["-1", "", "0x10", "1 2"] {
            assert_eq!(
                facts(&[h("content-length", bad)]),
                Err(FramingError::ContentLength),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn response_framing_depends_on_method_and_status() {
        let cl = facts(&[h("content-length", "7")]).unwrap();
        assert_eq!(response_body(&cl, false, 200), Framing::Length(7));
        assert_eq!(response_body(&cl, true, 200), Framing::Length(0));
        for status in [100, 101, 204, 304] {
            assert_eq!(response_body(&cl, false, status), Framing::Length(0));
        }
        let none = facts(&[]).unwrap();
        assert_eq!(response_body(&none, false, 200), Framing::UntilClose);
        let te = facts(&[h("transfer-encoding", "chunked")]).unwrap();
        assert_eq!(response_body(&te, false, 200), Framing::Chunked);
        let gz = facts(&[h("transfer-encoding", "gzip")]).unwrap();
        assert_eq!(response_body(&gz, false, 200), Framing::UntilClose);
    }

    #[test]
    fn connection_tokens_are_read() {
        let f = facts(&[
            h("Connection", "Keep-Alive, Upgrade"),
            h("connection", "close"),
        ]);
        let f = f.unwrap();
        assert!(f.close && f.keep_alive && f.upgrade);
    }

    #[test]
    fn a_chunked_body_ends_where_its_last_chunk_and_trailers_end() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\nNEXT";
        let mut s = ChunkedScanner::default();
        let n = s.scan(body).unwrap();
        assert!(s.done());
        assert_eq!(&body[n..], b"NEXT");
        assert_eq!(s.data_bytes, 11);
    }

    #[test]
    fn a_chunked_body_can_arrive_one_byte_at_a_time() {
        let body = b"a\r\n0123456789\r\n0\r\n\r\n";
        let mut s = ChunkedScanner::default();
        for (i, b) in body.iter().enumerate() {
            assert!(!s.done(), "done early at {i}");
            assert_eq!(s.scan(std::slice::from_ref(b)).unwrap(), 1);
        }
        assert!(s.done());
        assert_eq!(s.data_bytes, 10);
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello",
            b"2\r\nabX",
            b"\r\n",
            b"0\r\n\n",
            b"ffffffffffffffff\r\n",
        ] {
            assert!(
                ChunkedScanner::default().scan(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
