//! The `snnc` binary: a thin shell over [`snnc::cli`].

fn main() -> std::process::ExitCode {
    snnc::cli::main()
}
