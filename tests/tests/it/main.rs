//! The integration test binary: cross-crate scenarios, crash and fault tests.

mod cli;
mod crash;
mod engine;
mod faults;
mod tidy;
mod views;
mod watchdog;
