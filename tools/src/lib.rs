//! `kappa-tools`: the `kappa` command line (clap + anyhow).
//!
//! The CLI lives in a library so integration tests run exactly the code the binary runs, with the
//! same exit codes, without spawning processes. Subcommands: `verify` and `inspect` (offline, read
//! only), `repair` (cuts a corrupt log after a report), `gen` (writes a synthetic log through the
//! storage API), `demo` (the engine embedded), `serve` (the appliance: HTTP API, metrics, status
//! page) and the admin commands that talk to a running `kappa serve` over HTTP (`topic`, `view`,
//! `produce`, `consume`, in `admin`).

pub mod admin;
pub mod alloc;
pub mod cli;
mod demo;
mod gen;
mod inspect;
mod repair;
pub mod serve;
mod verify;
