//! The integration test binary: cross-crate scenarios, crash and fault tests.

mod cli;
mod crash;
mod engine;
mod faults;
mod model;
mod props;
mod semantics;
mod tidy;
mod views;
