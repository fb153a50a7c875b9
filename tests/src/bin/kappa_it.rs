//! The `kappa` binary, built inside this package so integration tests can start it as a process
//! (`CARGO_BIN_EXE_kappa-it`): cargo builds a package's own binaries for its integration tests,
//! not other packages'. Same one line as `tools/src/main.rs`: the code under test is the library.

fn main() {
    std::process::exit(kappa_tools::cli::main_with_args(std::env::args_os()));
}
