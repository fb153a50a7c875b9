//! The `kappa` binary: a thin shell over `kappa_tools::cli`, which tests call directly.

fn main() {
    let code = kappa_tools::cli::main_with_args(std::env::args_os());
    std::process::exit(code);
}
