//! What the CLI prints on stdout, and what happens when no one reads it any more.
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
    let mut stdout = io::stdout().lock();
    let written = stdout.write_fmt(args).and_then(|()| stdout.write_all(b"\n"));
    match written {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("error: cannot write to stdout: {error}");
            std::process::exit(i32::from(super::exit::EXIT_UNAVAILABLE));
        }
    }
}
