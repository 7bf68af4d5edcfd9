//! Cutting a text to a length in bytes. Every bounded text in opflow (what an op sends as
//! the worker SDK and the dispatcher keep it, a step's label, a plan's problems) is cut the
//! same way, here: on a character boundary, ending in a note of how long it was, and never
//! longer than its limit, note included.

use std::borrow::Cow;

/// `text` if it fits in `limit` bytes; otherwise its start and `… (cut from N bytes)`,
/// together at most `limit` bytes (the note alone when `limit` is smaller than it).
pub fn cut(text: &str, limit: usize) -> Cow<'_, str> {
    if text.len() <= limit {
        return Cow::Borrowed(text);
    }
    let note = format!("… (cut from {} bytes)", text.len());
    let mut end = limit.saturating_sub(note.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{note}", &text[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_over_its_limit_is_cut_on_a_character_boundary_and_says_so() {
        assert_eq!(cut("short", 10), "short");
        let long = "é".repeat(1_000);
        let cut = cut(&long, 100);
        assert!(cut.len() <= 100, "{} bytes", cut.len());
        assert!(cut.starts_with('é') && cut.ends_with("(cut from 2000 bytes)"), "{cut}");
    }
}
