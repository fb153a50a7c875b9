//! The integration test binary: cross-crate scenarios, crash and fault tests.

mod cli;
mod crash;
mod engine;
mod tidy;
mod views;
