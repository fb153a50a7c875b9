//! The integration test binary: cross-crate scenarios, crash and fault tests.

mod cli;
mod crash;
mod deletion;
mod engine;
mod faults;
mod kafka;
mod serve;
mod tidy;
mod views;
