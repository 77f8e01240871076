//! The `tether` binary. Everything lives in the library so tests can call it.

fn main() -> std::process::ExitCode {
    tether_cli::main()
}
