//! Cost per record of reading a view's JSON field through `serve::fieldpath::FieldPath` (the
//! placeholder adapter over serde_json), beside the engine's text search `operator::json_number`
//! that it replaces in view specs: the price of a real parser, per record, for the record shapes
//! the appliance sees (flat, nested, and with the field name inside a string).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kappa_tools::serve::fieldpath::FieldPath;

fn records() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        ("flat", br#"{"sensor":"s-17","temp_c":21.5,"humidity":40,"ts":1700000000000}"#.to_vec(), "temp_c"),
        (
            "nested",
            br#"{"device":{"id":"d-9","site":{"name":"north","rack":4}},"reading":{"temp_c":21.5,"ok":true},"tags":["a","b"]}"#.to_vec(),
            "reading.temp_c",
        ),
        (
            "name_in_string",
            br#"{"note":"\"temp_c\": 99 was a typo","temp_c":21.5,"extra":{"temp_c":0}}"#.to_vec(),
            "temp_c",
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("field_number_per_record");
    group.throughput(Throughput::Elements(1));
    for (name, record, path) in records() {
        let field = FieldPath::parse(path).expect("valid path");
        assert_eq!(field.number(&record), Some(21.5), "{name}");
        group.bench_with_input(BenchmarkId::new("fieldpath", name), &record, |b, r| {
            b.iter(|| field.number(std::hint::black_box(r)))
        });
        if !path.contains('.') {
            group.bench_with_input(
                BenchmarkId::new("json_number_text_search", name),
                &record,
                |b, r| {
                    b.iter(|| kappa_engine::operator::json_number(std::hint::black_box(r), path))
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
