//! The admin commands: `kappa topic|view|produce|consume` talking to a running `kappa serve`.
//!
//! Like `rpk`, they are thin clients of the server's HTTP API (`--addr`, or `KAPPA_ADDR`; a token
//! with `--token` or `KAPPA_TOKEN`), print human tables by default and the server's JSON with
//! `--json`, and show a progress bar for long work (a rebuild). A refusal from the server is
//! printed with the field it names, and the command exits 2.

mod client;
mod consume;
mod produce;
mod table;
mod topic;
mod view;

pub use client::Client;
pub use consume::ConsumeArgs;
pub use produce::ProduceArgs;
pub use topic::TopicArgs;
pub use view::ViewArgs;

/// Where the server is and how to talk to it (every admin command takes these).
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// The `kappa serve` to talk to.
    #[arg(long, env = "KAPPA_ADDR", default_value = "http://127.0.0.1:9680", global = true)]
    pub addr: String,
    /// Bearer token, when the server requires one.
    #[arg(long, env = "KAPPA_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Prints a JSON value, pretty.
pub(crate) fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn topic(args: TopicArgs) -> anyhow::Result<i32> {
    topic::run(args).map(|()| 0)
}

pub fn view(args: ViewArgs) -> anyhow::Result<i32> {
    view::run(args).map(|()| 0)
}

pub fn produce(args: ProduceArgs) -> anyhow::Result<i32> {
    produce::run(args).map(|()| 0)
}

pub fn consume(args: ConsumeArgs) -> anyhow::Result<i32> {
    consume::run(args).map(|()| 0)
}
