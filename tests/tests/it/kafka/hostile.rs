//! Hostile and broken input on the Kafka listener: the connection is refused or closed, the
//! server stays up and keeps answering everyone else.

use kafka_protocol::messages::ApiVersionsRequest;

use super::*;
use crate::serve::Server;

fn frame(api_key: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(&api_key.to_be_bytes());
    header.extend_from_slice(&version.to_be_bytes());
    header.extend_from_slice(&5i32.to_be_bytes());
    header.extend_from_slice(&(-1i16).to_be_bytes());
    let mut out = ((header.len() + body.len()) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    out
}

fn still_serving(server: &Server) {
    let mut c = connect(server);
    c.call::<ApiVersionsRequest>(3, &ApiVersionsRequest::default())
        .expect("the server still answers");
}

#[test]
fn malformed_requests_close_the_connection_and_nothing_else() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), "[topics.t]\npartitions = 1\n", &[]);

    // Metadata v0 declaring 2^31-1 topics in a 4-byte body: a decoder that reserved memory from
    // the count would ask for ~150 GiB and abort the process (vendor/kafka-protocol/PATCHES.md).
    let mut c = connect(&server);
    c.send_raw(&frame(3, 0, &0x7fff_ffffi32.to_be_bytes())).expect("send");
    assert!(c.read_frame().is_err(), "closed");
    still_serving(&server);
    // The same in a compact (flexible) array, and in a nested array (Produce partitions).
    let mut c = connect(&server);
    let mut flexible = vec![0u8]; // no tagged fields in the header
    flexible.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    c.send_raw(&frame(3, 12, &flexible)).expect("send");
    assert!(c.read_frame().is_err());
    still_serving(&server);

    // Sizes: negative, below a header, truncated before the body ends.
    for bytes in [(-1i32).to_be_bytes().to_vec(), 3i32.to_be_bytes().to_vec()] {
        let mut c = connect(&server);
        c.send_raw(&bytes).expect("send");
        assert!(c.read_frame().is_err());
    }
    let mut c = connect(&server);
    c.send_raw(&100i32.to_be_bytes()).expect("send");
    c.send_raw(&[0u8; 50]).expect("send");
    drop(c);
    // An unknown API key.
    let mut c = connect(&server);
    c.send_raw(&frame(999, 0, &[])).expect("send");
    assert!(c.read_frame().is_err());

    // Random frames of every size: each connection is closed or answered, never a crash.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for round in 0..300 {
        let len = 8 + round % 200;
        let mut body: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        // A known API key and a supported version, so the decoders see the garbage.
        let apis = [0i16, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 32];
        let api = apis[round % apis.len()];
        body[0..2].copy_from_slice(&api.to_be_bytes());
        body[2..4].copy_from_slice(&((state % 5) as i16).to_be_bytes());
        let mut c = connect(&server);
        let mut sized = (body.len() as i32).to_be_bytes().to_vec();
        sized.extend_from_slice(&body);
        c.send_raw(&sized).expect("send");
        c.stream().set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
        let _ = c.read_frame();
    }
    still_serving(&server);
    // And the data is intact.
    let mut c = connect(&server);
    let f = fetch(&mut c, 12, "t", 0, 0, 0, 0, 1 << 20);
    assert_eq!((f.error_code, f.high_watermark), (0, 0));
}
