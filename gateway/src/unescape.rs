//! The JSON string escapes that can spell a secret, decoded for the DLP scan.
//!
//! The provider decodes every JSON string, so `\u0073k-ant-…` reaches it as `sk-ant-…`
//! (issue 12 item 15). Only two escapes can stand for a character a secret is made of:
//! `\uXXXX` (any character) and `\/`. The others (`\n`, `\t`, `\"`, `\\` …) stand for
//! characters no secret format contains, and the raw-text rules already expect them as
//! written (a PEM key's `\n`), so they are kept verbatim. A body with neither escape — the
//! usual case — is scanned as it is; otherwise it is decoded once into a copy that the DLP
//! scans instead, and match offsets are mapped back to the body.

/// A copy of a body with `\uXXXX` and `\/` decoded, and where each of its parts came from.
#[derive(Debug)]
pub struct Decoded {
    pub bytes: Vec<u8>,
    /// (offset in `bytes`, offset in the body) at the start of every verbatim run and of
    /// every decoded escape, ascending in both.
    map: Vec<(usize, usize)>,
}

impl Decoded {
    /// The map entry `at` falls in, and whether that entry is a decoded escape (its decoded
    /// length differs from its body length; a verbatim run's never does).
    fn entry(&self, at: usize) -> ((usize, usize), Option<usize>) {
        let i = self.map.partition_point(|&(d, _)| d <= at).saturating_sub(1);
        let (d, r) = self.map.get(i).copied().unwrap_or((0, 0));
        let escape_end = match self.map.get(i + 1) {
            Some(&(nd, nr)) if nr - r != nd - d => Some(nr),
            _ => None,
        };
        ((d, r), escape_end)
    }

    /// The body offset of `bytes[at]`: inside a decoded escape, the escape's start.
    pub fn body_offset(&self, at: usize) -> usize {
        match self.entry(at) {
            ((_, r), Some(_)) => r,
            ((d, r), None) => r + (at - d),
        }
    }

    /// The body span of `bytes[start..end]`, widened to whole escapes.
    pub fn body_span(&self, start: usize, end: usize) -> (usize, usize) {
        if end <= start {
            let s = self.body_offset(start);
            return (s, s);
        }
        let e = match self.entry(end - 1) {
            (_, Some(escape_end)) => escape_end,
            ((d, r), None) => r + (end - 1 - d) + 1,
        };
        (self.body_offset(start), e)
    }
}

fn hex4(b: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(b.get(..4)?).ok()?;
    u32::from_str_radix(s, 16).ok().filter(|_| s.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// `None` when `body` has no `\u` or `\/` (scan it as it is); else the decoded copy.
pub fn decode(body: &[u8]) -> Option<Decoded> {
    let first = memchr::memmem::find(body, b"\\u")
        .into_iter()
        .chain(memchr::memmem::find(body, b"\\/"))
        .min()?;
    // Everything before the first candidate, back to the start of its run of backslashes,
    // is verbatim (a `\\` pair before it belongs to the same run).
    let mut start = first;
    while start > 0 && body[start - 1] == b'\\' {
        start -= 1;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut map = vec![(0, 0)];
    out.extend_from_slice(&body[..start]);
    let mut i = start;
    while let Some(k) = memchr::memchr(b'\\', &body[i..]) {
        out.extend_from_slice(&body[i..i + k]);
        i += k;
        let escape_at = (out.len(), i);
        match body.get(i + 1) {
            Some(b'u') => {
                let Some(mut cp) = hex4(&body[i + 2..]) else {
                    out.extend_from_slice(&body[i..i + 2]);
                    i += 2;
                    continue;
                };
                let mut len = 6;
                if (0xD800..0xDC00).contains(&cp)
                    && body.get(i + 6..i + 8) == Some(b"\\u")
                    && let Some(lo) =
                        hex4(&body[i + 8..]).filter(|lo| (0xDC00..0xE000).contains(lo))
                {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    len = 12;
                }
                match char::from_u32(cp) {
                    Some(c) => {
                        map.push(escape_at);
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        i += len;
                        map.push((out.len(), i));
                    }
                    None => {
                        // A lone surrogate: no secret character; keep it as written.
                        out.extend_from_slice(&body[i..i + 6]);
                        i += 6;
                    }
                }
            }
            Some(b'/') => {
                map.push(escape_at);
                out.push(b'/');
                i += 2;
                map.push((out.len(), i));
            }
            Some(_) => {
                // `\\`, `\n`, `\"` …: kept verbatim, both bytes (so `\\u` is not an escape).
                out.extend_from_slice(&body[i..i + 2]);
                i += 2;
            }
            None => {
                out.push(b'\\');
                i += 1;
            }
        }
    }
    out.extend_from_slice(&body[i..]);
    Some(Decoded { bytes: out, map })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_only_the_escapes_that_can_spell_a_secret() {
        assert!(decode(br#"{"a":"plain \n text \"q\" \\ end"}"#).is_none());
        let body = br#"{"a":"\u0073k-ant \/ \n \\u0073 \ud83d\ude00 \ud800 \u00e9"}"#;
        let d = decode(body).unwrap();
        assert_eq!(
            String::from_utf8(d.bytes.clone()).unwrap(),
            "{\"a\":\"sk-ant / \\n \\\\u0073 \u{1F600} \\ud800 \u{e9}\"}"
        );
        // Offsets map back: 's' came from the escape at 6, 'k' from 12.
        assert_eq!(d.body_offset(6), 6);
        assert_eq!(d.body_offset(7), 12);
        assert_eq!(d.body_span(6, 12), (6, 17));
        assert_eq!(d.body_offset(0), 0);
    }

    #[test]
    fn a_span_ending_in_an_escape_covers_all_of_it() {
        let body = br#"xx\u0041\u0042yy"#;
        let d = decode(body).unwrap();
        assert_eq!(d.bytes, b"xxAByy");
        assert_eq!(d.body_span(2, 4), (2, 14));
        assert_eq!(d.body_span(0, 6), (0, 16));
        assert_eq!(&body[d.body_span(4, 6).0..d.body_span(4, 6).1], b"yy");
    }
}
