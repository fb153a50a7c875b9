//! Child process of the view checkpoint test: maintains the `sums` view while producing, until it
//! is killed. Usage: `kappa-view-writer DIR ROUND`.

use std::io::Write;

use kappa_engine::{Durability, Engine, TopicConfig};
use kappa_tests::views::{produce, sums};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or_else(|| anyhow::anyhow!("usage: DIR ROUND"))?;
    let round: u64 = args.next().ok_or_else(|| anyhow::anyhow!("usage: DIR ROUND"))?.parse()?;
    let engine = Engine::builder().data_dir(&dir).shards(2).build()?;
    engine.ensure_topic("events", TopicConfig::new(3))?;
    let _view = engine.create_view("sums", sums("a"))?;
    let mut start = (0..3)
        .map(|p| engine.partition_offsets("events", p).map(|o| o.end_offset))
        .sum::<Result<u64, _>>()?;
    println!("ready");
    std::io::stdout().flush()?;
    loop {
        produce(&engine, 500, round * 1_000_003 + start, start, Durability::Written)?;
        start += 500;
    }
}
