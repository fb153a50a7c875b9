//! Child process of the data dir lock tests: opens an engine on DIR, says "ready", and holds it
//! until killed. Usage: `kappa-dir-holder DIR`.

use std::io::Write;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: DIR"))?;
    let _engine = kappa_engine::Engine::builder().data_dir(&dir).shards(1).build()?;
    println!("ready");
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}
