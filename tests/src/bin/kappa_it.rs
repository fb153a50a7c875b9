//! The `kappa` binary, built inside this package so integration tests can start it as a process
//! (`CARGO_BIN_EXE_kappa-it`): cargo builds a package's own binaries for its integration tests,
//! not other packages'. Same lines as `tools/src/main.rs`, its allocator included: the code under
//! test is the library.

#[global_allocator]
static GLOBAL: kappa_tools::alloc::Allocator = kappa_tools::alloc::ALLOCATOR;

fn main() {
    std::process::exit(kappa_tools::cli::main_with_args(std::env::args_os()));
}
