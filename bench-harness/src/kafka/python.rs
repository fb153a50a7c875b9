//! confluent-kafka's produce and consume rates from Python: a real client's data point beside
//! our own client's.

const PYTHON: &str = r#"
import json, sys, time
from confluent_kafka import Producer, Consumer, TopicPartition
bs, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
value = b"x" * 1024
p = Producer({"bootstrap.servers": bs, "acks": "1", "linger.ms": 5, "batch.num.messages": 1000,
              "batch.size": 2000000, "queue.buffering.max.messages": 1000000})
start = time.time()
for i in range(n):
    while True:
        try:
            p.produce(topic, key=b"%016d" % i, value=value)
            break
        except BufferError:
            p.poll(0.01)
p.flush(120)
produce_s = time.time() - start
c = Consumer({"bootstrap.servers": bs, "group.id": "bench", "enable.auto.commit": False,
              "fetch.max.bytes": 52428800})
# assign, not subscribe: no group join in the timed span; timed from assign to the last record.
got, start = 0, time.time()
c.assign([TopicPartition(topic, 0, 0)])
while got < n and time.time() - start < 300:
    msgs = c.consume(10000, 1.0)
    got += sum(1 for m in msgs if not m.error())
consume_s = time.time() - start
c.close()
print(json.dumps({"records": n, "produce_records_s": n / produce_s, "consume_records_s": got / consume_s, "consumed": got}))
"#;

pub(super) fn python_rates(addr: std::net::SocketAddr, records: u64) -> serde_json::Value {
    let output = std::process::Command::new("python3")
        .args(["-c", PYTHON, &addr.to_string(), "kafka-python-bench", &records.to_string()])
        .output();
    match output {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .rev()
                .find_map(|l| serde_json::from_str(l).ok())
                .unwrap_or_else(|| serde_json::json!({ "error": format!("no JSON in {text}") }))
        }
        Ok(out) => serde_json::json!({
            "error": format!("python3 failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""))
        }),
        Err(e) => serde_json::json!({ "error": format!("python3: {e}") }),
    }
}
