//! `kappa-tools`: the `kappa` command line (clap + anyhow).
//!
//! The CLI lives in a library so integration tests run exactly the code the binary runs, with the
//! same exit codes, without spawning processes. Subcommands: `verify` and `inspect` (offline, read
//! only), `repair` (cuts a corrupt log after a report), `gen` (writes a synthetic log through the
//! storage API). `serve`, `produce`, `consume`,
//! `query` and `rebuild` arrive with the engine; `demo` grows with it.

pub mod cli;
mod demo;
mod gen;
mod inspect;
mod repair;
mod verify;
