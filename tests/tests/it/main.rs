//! The integration test binary: cross-crate scenarios, crash and fault tests.

mod batching;
mod cli;
mod crash;
mod deletion;
mod embedded;
mod engine;
mod faults;
mod kafka;
mod model;
mod powercut;
mod powercut_deletion;
mod props;
mod replay_live;
mod safety;
mod semantics;
mod serve;
mod split_poison;
mod tidy;
mod versions;
mod view_hooks;
mod view_regressions;
mod views;
mod watchdog;
