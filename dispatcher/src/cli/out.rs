//! What the CLI prints on stdout, and what happens when no one reads it any more.
//!
//! Every line passes [`clean`] on its way out: what ops send (log lines, errors, progress
//! messages, outputs) is printed by `opflow logs`, `events`, `watch`, `status` and
//! `outputs`, and an op must not be able to drive the user's terminal (retitle it, clear
//! it, rewrite the lines above, or hide text) through them.
//!
//! SIGPIPE stays ignored in every opflow process (Rust's default), so that a peer hanging up
//! is an error on its socket, never the death of a process that serves others: the
//! dispatcher's API writes with `writev`, which cannot ask not to be signalled. Then a
//! closed stdout is an error too, and this is where it is handled: the command stops
//! quietly, as `head`'s reader expects.

use std::{
    fmt,
    io::{self, Write},
};

/// Writes one line to stdout (the `say!` macro); a closed stdout ends the process with
/// exit code 0, any other failure to write with 3.
pub fn line(args: fmt::Arguments<'_>) {
    let text = fmt::format(args);
    let mut stdout = io::stdout().lock();
    let written = stdout.write_all(clean(&text).as_bytes()).and_then(|()| stdout.write_all(b"\n"));
    match written {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("error: cannot write to stdout: {error}");
            std::process::exit(i32::from(super::exit::EXIT_UNAVAILABLE));
        }
    }
}

/// `text` without terminal control: escape sequences (CSI `ESC [ … final`, OSC `ESC ] …
/// BEL|ESC \\`, and any other `ESC x`) removed, and every other control character (C0 and
/// C1, but tab and newline) shown as `�`. Plain text comes back unchanged, unallocated.
pub fn clean(text: &str) -> std::borrow::Cow<'_, str> {
    let is_control = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte in @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC (and the other string controls): up to BEL or ESC \.
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            chars.next_if_eq(&'\\');
                            break;
                        }
                    }
                }
                _ => {}
            },
            // C1's CSI, as one character.
            '\u{9b}' => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            c if is_control(c) => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn plain_text_passes_unchanged() {
        assert!(matches!(clean("step 7: 42% paths\tok\nnext"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn escape_sequences_are_removed_and_other_controls_shown() {
        assert_eq!(clean("\u{1b}]0;pwned\u{7}title"), "title");
        assert_eq!(clean("\u{1b}]8;;http://x\u{1b}\\link\u{1b}]8;;\u{1b}\\"), "link");
        assert_eq!(clean("\u{1b}[2J\u{1b}[1;31mred\u{1b}[0m"), "red");
        assert_eq!(clean("a\rb\u{8}c\u{7}"), "a\u{fffd}b\u{fffd}c\u{fffd}");
        assert_eq!(clean("x\u{9b}2Jy\u{85}z"), "xy\u{fffd}z");
        assert_eq!(clean("cut \u{1b}["), "cut ");
    }
}
