//! Property tests of the head guard: arbitrary input never panics and gives the same
//! verdicts however it is split into reads; well-formed keep-alive sequences (bodies full
//! of CRLFs and fake request lines) are all accepted and agree with httparse, hyper's
//! parser; and any one smuggling mutation is refused exactly at the request it is in.

use proptest::prelude::*;

use super::{HeadError, HeadGuard};

fn all_verdicts(chunks: &[&[u8]]) -> Vec<Result<(), HeadError>> {
    let mut g = HeadGuard::new(16 * 1024);
    for c in chunks {
        g.feed(c);
    }
    std::iter::from_fn(|| g.verdicts.pop_front()).collect()
}

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunked: Option<Vec<usize>>,
}

impl Req {
    fn head(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.path).into_bytes();
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        match &self.chunked {
            Some(_) => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
            None if !self.body.is_empty() => {
                out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes())
            }
            None => {}
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.head();
        match &self.chunked {
            None => out.extend_from_slice(&self.body),
            Some(cuts) => {
                let mut rest = &self.body[..];
                for &cut in cuts {
                    let n = cut.min(rest.len());
                    if n == 0 {
                        continue;
                    }
                    out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                    out.extend_from_slice(&rest[..n]);
                    out.extend_from_slice(b"\r\n");
                    rest = &rest[n..];
                }
                if !rest.is_empty() {
                    out.extend_from_slice(format!("{:X};x=y\r\n", rest.len()).as_bytes());
                    out.extend_from_slice(rest);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
        }
        out
    }
}

fn req() -> impl Strategy<Value = Req> {
    let method = prop::sample::select(vec!["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"]);
    let path = "/[a-z0-9/._-]{0,20}(\\?[a-z=&]{0,10})?";
    let header = ("[A-Za-z][A-Za-z0-9-]{0,15}", "[ -~]{0,30}")
        .prop_filter("framing headers are added by the generator", |(n, _)| {
            let n = n.to_ascii_lowercase();
            n != "content-length" && n != "transfer-encoding"
        })
        .prop_map(|(n, v)| (n, v.trim().to_owned()));
    // Bodies deliberately full of things that look like framing.
    let body_piece = prop_oneof![
        Just(b"\r\n".to_vec()),
        Just(b"\r\n\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"GET /smuggled HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec()),
        Just(b"0\r\n\r\n".to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    let body = prop::collection::vec(body_piece, 0..6).prop_map(|p| p.concat());
    let chunked = prop::option::of(prop::collection::vec(1usize..50, 0..5));
    (method, path, prop::collection::vec(header, 0..6), body, chunked).prop_map(
        |(method, path, headers, body, chunked)| Req {
            method,
            path: format!("/{path}"),
            headers,
            body,
            chunked,
        },
    )
}

/// Edits that make the head of a request ambiguous or malformed.
fn smuggle(head: &[u8], kind: usize) -> Vec<u8> {
    let text = String::from_utf8_lossy(head).into_owned();
    let end = text.len() - 2; // before the final CRLF
    let (start, tail) = text.split_at(end);
    match kind {
        0 => format!("{start}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n{tail}"),
        1 => format!("{start}Transfer-Encoding: chunked\r\nContent-Length: 0\r\n{tail}"),
        2 => format!("{start}Content-Length: 1\r\nContent-Length: 2\r\n{tail}"),
        3 => format!("{start}X-A: 1\r\n folded\r\n{tail}"),
        4 => format!("{start}X-A: 1\nTransfer-Encoding: chunked\r\n{tail}"),
        5 => format!("{start}Transfer-Encoding: chunked, identity\r\n{tail}"),
        _ => format!("{start}Content-Length : 3\r\n{tail}"),
    }
    .into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_input_any_split_same_verdicts(input in prop::collection::vec(any::<u8>(), 0..600), cuts in prop::collection::vec(0usize..600, 0..8)) {
        let whole = all_verdicts(&[&input]);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut at = 0;
        for c in cuts {
            pieces.push(&input[at..c]);
            at = c;
        }
        pieces.push(&input[at..]);
        prop_assert_eq!(all_verdicts(&pieces), whole);
    }

    #[test]
    fn well_formed_sequences_are_accepted(reqs in prop::collection::vec(req(), 1..5), split in 1usize..64) {
        let wire: Vec<u8> = reqs.iter().flat_map(Req::bytes).collect();
        let pieces: Vec<&[u8]> = wire.chunks(split).collect();
        let verdicts = all_verdicts(&pieces);
        prop_assert_eq!(verdicts, vec![Ok(()); reqs.len()]);
        // hyper's parser reads each accepted head to the same end.
        for r in &reqs {
            let head = r.head();
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut parsed = httparse::Request::new(&mut headers);
            prop_assert_eq!(parsed.parse(&head), Ok(httparse::Status::Complete(head.len())));
        }
    }

    #[test]
    fn one_smuggled_head_is_refused_where_it_is(reqs in prop::collection::vec(req(), 1..4), which in 0usize..4, kind in 0usize..7) {
        let which = which % reqs.len();
        let mut wire = Vec::new();
        for r in &reqs[..which] {
            wire.extend(r.bytes());
        }
        wire.extend(smuggle(&reqs[which].head(), kind));
        wire.extend(b"GET /after HTTP/1.1\r\n\r\n");
        let verdicts = all_verdicts(&[&wire]);
        prop_assert_eq!(verdicts.len(), which + 1);
        prop_assert!(verdicts[..which].iter().all(Result::is_ok));
        prop_assert!(verdicts[which].is_err());
    }
}
