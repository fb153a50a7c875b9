//! Tests of `kappa.toml`'s parsing: defaults, overrides, and errors that name the key, line and
//! column.

use super::*;

fn check(text: &str) -> Result<Settings, ConfigError> {
    parse(text, Path::new("kappa.toml"), &Overrides::default())
}

fn error(text: &str) -> (String, usize, usize, String) {
    match check(text) {
        Err(ConfigError::File { key, line, column, message, .. }) => (key, line, column, message),
        other => panic!("expected a file error, got {other:?}"),
    }
}

#[test]
fn the_empty_file_is_the_embedded_default() {
    let s = check("").expect("the default is valid");
    assert_eq!(s.http_addr.to_string(), DEFAULT_HTTP_ADDR);
    assert_eq!(s.config.data_dir, PathBuf::from("kappa-data"));
    assert_eq!(s.default_durability, Durability::Written);
    assert!(s.token.is_none() || std::env::var("KAPPA_TOKEN").is_ok());
}

#[test]
fn errors_name_key_line_and_column() {
    let (key, line, column, message) = error("data_dir = \"d\"\n[engine]\nshards = \"two\"\n");
    assert_eq!((key.as_str(), line, column), ("engine.shards", 3, 10), "{message}");
    let (key, line, _, message) = error("[http]\nadress = \"x\"\n");
    assert_eq!((key.as_str(), line), ("http.adress", 2), "{message}");
    assert!(message.contains("unknown field"), "{message}");
    let (key, line, column, _) = error("[topics.t]\npartitions = 0\n");
    assert_eq!((key.as_str(), line, column), ("topics.t.partitions", 2, 14));
    let (key, ..) = error("[topics.t]\nretention_ms = 5\n");
    assert_eq!(key, "topics.t.partitions");
    let text = "[topics.t]\npartitions = 1\n[views.v]\ntopic = \"t\"\naggregate = \"mean\"\n\
                value_field = \"x\"\nwindow = { kind = \"tumbling\", size_ms = -5 }\n";
    let (key, line, column, message) = error(text);
    assert_eq!((key.as_str(), line, column), ("views.v.window.size_ms", 7, 41), "{message}");
    let (key, line, ..) = error("[views.v]\ntopic = \"nope\"\n");
    assert_eq!((key.as_str(), line), ("views.v.topic", 2));
    let (key, ..) = error("[engine]\ndefault_durability = \"sometimes\"\n");
    assert_eq!(key, "engine.default_durability");
    let (key, ..) = error("[http]\naddr = \"0.0.0.0:80\"\n");
    assert_eq!(key, "http.addr", "a public address needs a token");
    let (key, ..) = error("[kafka]\naddr = \"0.0.0.0:9092\"\n");
    assert_eq!(key, "kafka.addr", "a wildcard Kafka address needs an advertised host");
    let (key, ..) = error("[kafka]\nmax_request_bytes = 10\n");
    assert_eq!(key, "kafka.max_request_bytes");
    check("[kafka]\naddr = \"0.0.0.0:9092\"\nadvertised_host = \"kappa.local\"\n")
        .expect("a wildcard with an advertised host");
    let (_, line, ..) = error("[http\n");
    assert_eq!(line, 1, "a syntax error has a position too");
}

#[test]
fn duplicates_and_out_of_range_values_name_their_key() {
    let (key, line, ..) = error("[http]\nthreads = 1\nthreads = 2\n");
    assert_eq!((key.as_str(), line), ("http.threads", 3));
    let (key, ..) = error("[topics.a]\npartitions = 1\n[topics.a]\npartitions = 2\n");
    assert_eq!(key, "topics.a");
    let (key, ..) = error("[engine]\nio_memory_mib = 17592186044416\n");
    assert_eq!(key, "engine.io_memory_mib", "2^44 MiB must not wrap to 0");
    let (key, ..) = error("[engine]\ncpus = [999999]\n");
    assert_eq!(key, "engine.cpus.0");
    let (key, ..) = error("[http]\nthreads = 100000000\n");
    assert_eq!(key, "http.threads");
    let (key, ..) = error("[topics.t]\npartitions = 4097\n");
    assert_eq!(key, "topics.t.partitions");
    let (key, ..) = error("[topics.t]\npartitions = 1\nretention_bytes = 0\n");
    assert_eq!(key, "topics.t.retention_bytes");
    let (key, ..) = error("[http]\nmax_in_flight_body_bytes = 1024\n");
    assert_eq!(key, "http.max_in_flight_body_bytes");
}

#[test]
fn a_token_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let file = std::env::temp_dir().join(format!("kappa-token-test-{}", std::process::id()));
    std::fs::write(&file, "abcdefghijklmnopqrstuvwxyz\n").expect("token");
    let text = format!("[http]\ntoken_file = \"{}\"\n", file.display());
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let (key, _, _, message) = error(&text);
    assert_eq!(key, "http.token_file", "{message}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(check(&text).is_ok());
    std::fs::write(&file, "short\n").expect("token");
    let (key, ..) = error(&text);
    assert_eq!(key, "http.token_file", "a short token in the file is blamed on the file");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn flags_override_and_are_checked() {
    let overrides = Overrides {
        data_dir: Some("elsewhere".into()),
        http_addr: Some("127.0.0.1:0".into()),
        kafka_addr: Some("127.0.0.1:19092".into()),
        log_format: Some(LogFormat::Json),
    };
    let s = parse("data_dir = \"d\"", Path::new("k.toml"), &overrides).expect("valid");
    assert_eq!(s.config.data_dir, PathBuf::from("elsewhere"));
    assert_eq!(s.http_addr.port(), 0);
    assert_eq!(s.kafka_addr.port(), 19092);
    assert_eq!(s.log_format, LogFormat::Json);
    let bad = Overrides { http_addr: Some("nope".into()), ..Overrides::default() };
    assert!(matches!(
        parse("", Path::new("k.toml"), &bad),
        Err(ConfigError::Flag { flag: "--http-addr", .. })
    ));
}

#[test]
fn the_example_config_is_valid() {
    let text = include_str!("../../../../deploy/kappa.toml");
    let s = check(text).unwrap_or_else(|e| panic!("deploy/kappa.toml: {e}"));
    assert!(!s.config.topics.is_empty() && !s.config.views.is_empty());
}
