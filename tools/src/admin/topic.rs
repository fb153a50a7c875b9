//! `kappa topic list|create|describe|delete`.

use serde_json::json;

use super::{print_json, table, Client, Conn};

#[derive(Debug, Clone, clap::Args)]
pub struct TopicArgs {
    #[command(subcommand)]
    pub command: TopicCommand,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TopicCommand {
    /// Topics with their partitions, records and sizes.
    List,
    /// Creates a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Delete sealed segments older than this (ms).
        #[arg(long)]
        retention_ms: Option<i64>,
        /// Keep at most this many bytes per partition.
        #[arg(long)]
        retention_bytes: Option<u64>,
        #[arg(long)]
        segment_bytes: Option<u64>,
    },
    /// Partitions with their offsets, sizes and shards.
    Describe { name: String },
    /// Deletes a topic and its records (refused while views read it).
    Delete { name: String },
}

pub fn run(args: TopicArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn);
    let json = args.conn.json;
    match args.command {
        TopicCommand::List => {
            let answer = client.get("/v1/topics")?;
            if json {
                return print_json(&answer);
            }
            let rows: Vec<Vec<String>> = answer["topics"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .map(|t| {
                    vec![
                        table::cell(&t["name"]),
                        table::cell(&t["partitions"]),
                        table::cell(&t["records"]),
                        table::cell(&t["size_bytes"]),
                        table::cell(&t["retention_ms"]),
                    ]
                })
                .collect();
            table::print(&["NAME", "PARTITIONS", "RECORDS", "BYTES", "RETENTION_MS"], &rows);
        }
        TopicCommand::Create { name, partitions, retention_ms, retention_bytes, segment_bytes } => {
            let mut body = json!({ "name": name, "partitions": partitions });
            if let Some(v) = retention_ms {
                body["retention_ms"] = v.into();
            }
            if let Some(v) = retention_bytes {
                body["retention_bytes"] = v.into();
            }
            if let Some(v) = segment_bytes {
                body["segment_bytes"] = v.into();
            }
            let answer = client.post_json("/v1/topics", &body)?;
            if json {
                return print_json(&answer);
            }
            println!("created topic {name} with {partitions} partition(s)");
        }
        TopicCommand::Describe { name } => {
            let answer = client.get(&format!("/v1/topics/{name}"))?;
            if json {
                return print_json(&answer);
            }
            println!(
                "topic {}: {} partition(s), {} record(s), {} bytes; views: {}",
                name,
                table::cell(&answer["partitions"]),
                table::cell(&answer["records"]),
                table::cell(&answer["size_bytes"]),
                answer["views"]
                    .as_array()
                    .filter(|v| !v.is_empty())
                    .map(|v| v.iter().map(table::cell).collect::<Vec<_>>().join(", "))
                    .unwrap_or_else(|| "none".into())
            );
            let rows: Vec<Vec<String>> = answer["partition_detail"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .map(|p| {
                    ["partition", "shard", "start_offset", "end_offset", "size_bytes", "segments"]
                        .iter()
                        .map(|k| table::cell(&p[*k]))
                        .collect()
                })
                .collect();
            table::print(&["PARTITION", "SHARD", "START", "END", "BYTES", "SEGMENTS"], &rows);
        }
        TopicCommand::Delete { name } => {
            let answer = client.delete(&format!("/v1/topics/{name}"))?;
            if json {
                return print_json(&answer);
            }
            println!("deleted topic {name}");
        }
    }
    Ok(())
}
