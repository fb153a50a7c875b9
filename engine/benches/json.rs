//! The per-record cost of reading a number out of a JSON value, the way a view's `map_json`
//! does (the path walk over serde_json's deserializer), beside the alternatives it was chosen
//! over: the same walk over sonic-rs's deserializer, sonic-rs's lazy `get_from_slice` (one
//! allocation per call), and a full `serde_json::Value` parse. Three documents: a flat sensor record (~100 B) with the field last
//! and a string holding its name first, a nested one, and a 1 KiB one with the field at the end.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kappa_engine::operator::JsonPath;

const RECORDS: usize = 1000;

fn documents(kind: &str) -> (Vec<String>, &'static str) {
    let docs = (0..RECORDS)
        .map(|i| match kind {
            "flat_100B" => format!(
                r#"{{"sensor":"sensor-{:02}","unit":"temp_c","site":"north","seq":{i},"temp_c":{}.{}}}"#,
                i % 50,
                i % 40,
                i % 10
            ),
            "nested_200B" => format!(
                r#"{{"id":{i},"meta":{{"site":"north","tags":["a","b","temp_c"]}},"reading":{{"unit":"c","temp_c":{}.5,"ok":true}},"note":"x\"y"}}"#,
                i % 40
            ),
            _ => {
                let pad = "z".repeat(900);
                format!(r#"{{"id":{i},"pad":"{pad}","list":[1,2,3,4,5,6,7,8],"temp_c":{}.25}}"#, i % 40)
            }
        })
        .collect();
    let path = if kind == "nested_200B" { "reading.temp_c" } else { "temp_c" };
    (docs, path)
}

/// The sonic-rs walk's time over the serde_json walk's, as the median (and range) of 41 paired
/// rounds that alternate which goes first: on a noisy machine a ratio measured side by side means
/// more than two criterion groups measured a minute apart.
fn paired_ratio(kind: &str, docs: &[String], path: &JsonPath) {
    let pass = |sonic: bool| {
        #[allow(clippy::disallowed_methods)] // A benchmark measures wall time.
        let started = std::time::Instant::now();
        let mut sum = 0.0;
        for _ in 0..20 {
            for doc in docs {
                let bytes = black_box(doc.as_bytes());
                sum += if sonic {
                    let mut de = sonic_rs::Deserializer::from_slice(bytes);
                    path.number_from(&mut de).ok().and_then(Result::ok).unwrap_or(0.0)
                } else {
                    path.number(bytes).unwrap_or(0.0)
                };
            }
        }
        black_box(sum);
        started.elapsed().as_secs_f64()
    };
    let mut ratios: Vec<f64> = (0..41)
        .map(|round| {
            if round % 2 == 0 {
                let serde = pass(false);
                pass(true) / serde
            } else {
                let sonic = pass(true);
                sonic / pass(false)
            }
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    eprintln!(
        "json_{kind}: sonic-rs walk / serde_json walk = {:.2} (median of 41 paired rounds; {:.2}..{:.2})",
        ratios[20], ratios[0], ratios[40]
    );
}

fn bench(c: &mut Criterion) {
    for kind in ["flat_100B", "nested_200B", "flat_1KiB"] {
        let (docs, path) = documents(kind);
        let parsed = JsonPath::parse(path).expect("path");
        let pointer: Vec<&str> = path.split('.').collect();
        for doc in &docs {
            assert!(parsed.number(doc.as_bytes()).is_ok(), "{doc}");
        }
        paired_ratio(kind, &docs, &parsed);
        let mut group = c.benchmark_group(format!("json_{kind}"));
        group.throughput(Throughput::Elements(RECORDS as u64));
        group.bench_function("JsonPath::number (serde_json walk)", |b| {
            b.iter(|| {
                let mut sum = 0.0;
                for doc in &docs {
                    sum += parsed.number(black_box(doc.as_bytes())).unwrap_or(0.0);
                }
                sum
            })
        });
        group.bench_function("sonic-rs walk", |b| {
            b.iter(|| {
                let mut sum = 0.0;
                for doc in &docs {
                    let mut de = sonic_rs::Deserializer::from_slice(black_box(doc.as_bytes()));
                    if let Ok(Ok(v)) = parsed.number_from(&mut de) {
                        if de.end().is_ok() {
                            sum += v;
                        }
                    }
                }
                sum
            })
        });
        group.bench_function("sonic_rs::get_from_slice", |b| {
            b.iter(|| {
                let mut sum = 0.0;
                for doc in &docs {
                    if let Ok(v) = sonic_rs::get_from_slice(black_box(doc.as_bytes()), &pointer) {
                        sum += sonic_rs::JsonValueTrait::as_f64(&v).unwrap_or(0.0);
                    }
                }
                sum
            })
        });
        group.bench_function("serde_json::Value", |b| {
            b.iter(|| {
                let mut sum = 0.0;
                for doc in &docs {
                    if let Ok(v) =
                        serde_json::from_slice::<serde_json::Value>(black_box(doc.as_bytes()))
                    {
                        let mut at = &v;
                        for segment in &pointer {
                            at = &at[*segment];
                        }
                        sum += at.as_f64().unwrap_or(0.0);
                    }
                }
                sum
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
