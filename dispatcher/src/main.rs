//! The `opflow` binary; see `opflow --help`.

fn main() -> std::process::ExitCode {
    opflow_dispatcher::cli::main()
}
