//! The `snnc` binary: a thin shell over [`snnc::cli`].

fn main() -> std::process::ExitCode {
    snn_runtime::allocator::keep_freed_memory();
    snnc::cli::main()
}
