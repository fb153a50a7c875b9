//! The admin commands against a running `kappa serve`: topics, produce from stdin, consume with
//! each start point and `--count`, views (get, rebuild with progress, rollback), `--json`, the
//! address from `KAPPA_ADDR`, and errors naming the field.

use serde_json::Value;

use super::{kappa, Server, SENSORS};

#[test]
fn topics_produce_consume_and_views_from_the_command_line() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), SENSORS, &[]);
    let addr = server.base.clone();
    let run = |args: &[&str], stdin: &[u8]| {
        let mut all = args.to_vec();
        all.extend(["--addr", addr.as_str()]);
        kappa(&all, stdin, &[])
    };

    // Topics.
    let (code, out, err) = run(&["topic", "create", "logs", "--partitions", "2"], b"");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("created topic logs"), "{out}");
    let (code, out, _) = run(&["topic", "list"], b"");
    assert_eq!(code, 0);
    assert!(out.starts_with("NAME") && out.contains("logs") && out.contains("sensors"), "{out}");
    let (code, _, err) = run(&["topic", "create", "logs", "--partitions", "2"], b"");
    assert_eq!(code, 2);
    assert!(err.contains("409") && err.contains("field `name`"), "{err}");

    // Produce lines with keys; consume them back.
    let lines: String = (0..50).map(|i| format!("user-{}|event {i}\n", i % 3)).collect();
    let (code, _, err) =
        run(&["produce", "logs", "--key-sep", "|", "--durability", "synced"], lines.as_bytes());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("produced 50 record(s)"), "{err}");
    let (code, out, err) =
        run(&["consume", "logs", "--from-beginning", "--count", "50", "--print-key"], b"");
    assert_eq!(code, 0, "{err}");
    let mut got: Vec<&str> = out.lines().collect();
    got.sort_unstable();
    let mut want: Vec<String> = (0..50).map(|i| format!("user-{}\tevent {i}", i % 3)).collect();
    want.sort_unstable();
    assert_eq!(got, want);
    // Per key, the order of production is kept (one key, one partition).
    let user0: Vec<&str> = out.lines().filter(|l| l.starts_with("user-0\t")).collect();
    let expected0: Vec<String> =
        (0..50).filter(|i| i % 3 == 0).map(|i| format!("user-0\tevent {i}")).collect();
    assert_eq!(user0, expected0);
    // --offset, --partition and --json.
    let (code, out, _) = run(
        &["consume", "logs", "--partition", "0", "--offset", "1", "--count", "2", "--json"],
        b"",
    );
    assert_eq!(code, 0);
    let records: Vec<Value> =
        out.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(records.len(), 2);
    assert_eq!(
        (records[0]["offset"].as_u64(), records[0]["partition"].as_u64()),
        (Some(1), Some(0))
    );
    // --since: every record is newer than a minute ago.
    let (code, out, _) = run(&["consume", "logs", "--since", "1m", "--count", "50"], b"");
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 50);
    // Following from the end: records produced after the consumer started.
    let follower = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            kappa(&["consume", "logs", "--count", "3", "--addr", &addr], b"", &[])
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (code, _, _) = run(&["produce", "logs"], b"new 1\nnew 2\nnew 3\n");
    assert_eq!(code, 0);
    let (code, out, err) = follower.join().expect("follower");
    assert_eq!(code, 0, "{err}");
    let mut followed: Vec<&str> = out.lines().collect();
    followed.sort_unstable();
    assert_eq!(followed, ["new 1", "new 2", "new 3"]);

    // Describe with KAPPA_ADDR instead of --addr.
    let (code, out, err) = kappa(&["topic", "describe", "logs"], b"", &[("KAPPA_ADDR", &addr)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("topic logs: 2 partition(s), 53 record(s)"), "{out}");

    // Views: produce sensor readings, get, rebuild with progress, rollback.
    let readings: String = (0..2000)
        .map(|i| format!("{{\"m\":{{\"id\":\"s{}\",\"v\":{}}}}}\n", i % 2, i % 10))
        .collect();
    let (code, _, err) = run(&["produce", "sensors"], readings.as_bytes());
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run(&["view", "list"], b"");
    assert_eq!(code, 0);
    assert!(out.contains("sums") && out.contains("sensors"), "{out}");
    let definition = temp.path().join("count.toml");
    std::fs::write(
        &definition,
        "topic = \"sensors\"\nkey_field = \"m.id\"\naggregate = \"count\"\nrevision = \"count\"\n",
    )
    .expect("def");
    let (code, out, err) =
        run(&["view", "rebuild", "sums", "--definition", &definition.display().to_string()], b"");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rebuilding sums as version 2"), "{out}");
    assert!(out.contains("version 2 caught up and is served"), "{out}");
    assert!(err.contains("progress:") && err.contains("100.0%"), "{err}");
    let (code, out, _) = run(&["view", "get", "sums", "s1"], b"");
    assert_eq!(code, 0);
    assert!(out.contains("s1") && out.contains("1000"), "{out}");
    let (code, out, err) = run(&["view", "rollback", "sums"], b"");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("now serves version 1 (was 2)"), "{out}");
    let (code, out, _) = run(&["view", "describe", "sums", "--json"], b"");
    assert_eq!(code, 0);
    let described: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(described["served_version"], 1);
    // A bad definition is refused locally with its key.
    std::fs::write(&definition, "topic = \"sensors\"\naggregate = \"mean\"\n").expect("def");
    let (code, _, err) =
        run(&["view", "rebuild", "sums", "--definition", &definition.display().to_string()], b"");
    assert_eq!(code, 2);
    assert!(err.contains("value_field"), "{err}");
    // Delete the topic.
    let (code, _, err) = run(&["topic", "delete", "logs"], b"");
    assert_eq!(code, 0, "{err}");
    // Nobody listening: a clear error.
    let (code, _, err) = kappa(&["topic", "list", "--addr", "127.0.0.1:1"], b"", &[]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot reach kappa serve"), "{err}");
    assert!(server.stop().success());
}
