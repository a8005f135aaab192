//! Text from elsewhere, made fit to quote in a status, a summary or an error body.

/// `text` cut to at most `max` bytes, on a character boundary, ending in `…` (3 bytes, part
/// of the `max`) when it was cut; whole when it fits.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn cuts_on_a_character_boundary_within_the_limit() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdefghij", 6), "abc…");
        // `é` is two bytes: never split, and the result stays within the limit.
        let cut = truncate("ééééé", 6);
        assert_eq!(cut, "é…");
        assert!(cut.len() <= 6);
        assert_eq!(truncate("abc", 1), "…");
    }
}
