//! The integration test binary: cross-crate scenarios, crash and fault tests.

mod cli;
mod crash;
mod deletion;
mod engine;
mod faults;
mod model;
mod props;
mod semantics;
mod serve;
mod tidy;
mod views;
mod watchdog;
