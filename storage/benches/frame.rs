//! Criterion benches for the per-record CPU cost of the hot paths: frame encode, checksum, and
//! archived (zero-copy) access.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kappa_storage::{BatchEncoder, BatchRef, Limits, ProducerInfo, Record};
use rkyv::util::AlignedVec;

const RECORDS: usize = 1000;

fn batch(value_size: usize) -> (Vec<[u8; 16]>, Vec<u8>) {
    let keys = (0..RECORDS)
        .map(|i| {
            let mut k = [b'k'; 16];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            k
        })
        .collect();
    (keys, vec![0x5A; value_size * RECORDS])
}

fn bench(c: &mut Criterion) {
    for value_size in [100usize, 1024] {
        let (keys, values) = batch(value_size);
        let records: Vec<Record<'_>> = (0..RECORDS)
            .map(|i| {
                Record::new(
                    i as i64,
                    Some(&keys[i][..]),
                    &values[i * value_size..(i + 1) * value_size],
                )
            })
            .collect();
        let mut encoder = BatchEncoder::new(Limits::default());
        let mut group = c.benchmark_group(format!("value_{value_size}B"));
        group.throughput(Throughput::Elements(RECORDS as u64));
        group.bench_function("encode_frame", |b| {
            b.iter(|| {
                encoder.encode(0, &records, ProducerInfo::default()).expect("encodes").frame_len
            })
        });
        let mut frame = AlignedVec::<16>::new();
        frame.extend_from_slice(encoder.frame());
        group.bench_function("verify_checksum", |b| {
            b.iter(|| kappa_storage::format::parse_frame(&frame).expect("valid").0.checksum)
        });
        group.bench_function("archived_access_iterate", |b| {
            b.iter(|| {
                let batch = BatchRef::from_frame(&frame).expect("valid");
                batch
                    .records()
                    .map(|r| r.value().len() + r.key().map_or(0, <[u8]>::len))
                    .sum::<usize>()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
