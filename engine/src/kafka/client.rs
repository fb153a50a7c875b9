//! A minimal blocking Kafka client on `kafka-protocol`, for tests, the benchmark and debugging.
//!
//! It speaks exactly what it is asked to (API, version, request) over one TCP connection, so
//! tests can check the broker at every version and with malformed input, and `kappa-bench kafka`
//! can drive the broker without a client library being the bottleneck. Requests may be
//! pipelined: `send` several, then `receive` their responses in order. Not a general client: no
//! metadata cache, no retries, no partitioner.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kappa_storage::{ProducerInfo, Record};

use super::compression::{self, Codec};

/// What went wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding the request: {0}")]
    Encode(String),
    #[error("decoding the response: {0}")]
    Decode(String),
    #[error("response {got} arrived where {expected} was expected")]
    Correlation { expected: i32, got: i32 },
}

/// One connection to a Kafka broker.
pub struct Client {
    stream: TcpStream,
    next_correlation: i32,
    client_id: String,
    /// Response frames are read into this and split off; the allocation is reused once the
    /// caller drops the previous response (large fetches would otherwise fault in fresh pages
    /// for every response).
    read_buf: BytesMut,
}

/// The offset of the correlation id in a request frame (after the size, API key and version).
const CORRELATION_AT: usize = 8;

fn encode_error(e: impl std::fmt::Display) -> ClientError {
    ClientError::Encode(e.to_string())
}

/// Encodes a whole request frame (size prefix included) in one exactly sized buffer.
pub fn encode_request<R: Request>(
    version: i16,
    request: &R,
    correlation: i32,
    client_id: &str,
) -> Result<BytesMut, ClientError> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_string(client_id.to_string())));
    let size = header.compute_size(R::header_version(version)).map_err(encode_error)?
        + request.compute_size(version).map_err(encode_error)?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(i32::try_from(size).map_err(|_| ClientError::Encode(format!("size {size}")))?);
    header.encode(&mut buf, R::header_version(version)).map_err(encode_error)?;
    request.encode(&mut buf, version).map_err(encode_error)?;
    Ok(buf)
}

impl Client {
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Client {
            stream,
            next_correlation: 1,
            client_id: "kappa-client".into(),
            read_buf: BytesMut::new(),
        })
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends a request; returns its correlation id for `receive`.
    pub fn send<R: Request>(&mut self, version: i16, request: &R) -> Result<i32, ClientError> {
        let mut frame = encode_request(version, request, 0, &self.client_id)?;
        self.send_encoded(&mut frame)
    }

    /// Sends a frame made by `encode_request` (any correlation id: this sets the next one in
    /// place), so a caller can send the same request many times without encoding it again.
    /// Returns its correlation id for `receive`.
    pub fn send_encoded(&mut self, frame: &mut [u8]) -> Result<i32, ClientError> {
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let at = frame
            .get_mut(CORRELATION_AT..CORRELATION_AT + 4)
            .ok_or_else(|| ClientError::Encode("a frame shorter than a request header".into()))?;
        at.copy_from_slice(&correlation.to_be_bytes());
        self.stream.write_all(frame)?;
        Ok(correlation)
    }

    /// Reads the next response frame (without its size prefix).
    pub fn read_frame(&mut self) -> Result<Bytes, ClientError> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let size = i32::from_be_bytes(size);
        let size =
            usize::try_from(size).map_err(|_| ClientError::Decode(format!("size {size}")))?;
        // Reclaims the allocation of earlier frames once they are dropped.
        self.read_buf.clear();
        self.read_buf.reserve(size);
        // Straight into the spare capacity, not zeroed first: zeroing each 16 MiB fetch response
        // was 11% of the samples of `kappa-bench kafka --history-only`'s fetch phase, between
        // one response's size and its first bytes (the broker's send waiting meanwhile).
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.stream);
        while self.read_buf.len() < size {
            let at = self.read_buf.len();
            let spare = &mut self.read_buf.spare_capacity_mut()[..size - at];
            // SAFETY: the kernel writes at most `spare.len()` bytes at the pointer, which points
            // into the buffer's spare capacity (valid for writes of that many; nothing reads it).
            // A blocking recv: the stream's read timeout (`SO_RCVTIMEO`) applies.
            let got = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), 0) };
            match usize::try_from(got) {
                Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                // SAFETY: the kernel initialized these `n` bytes just past `len` (n <= spare).
                Ok(n) => unsafe { self.read_buf.set_len(at + n) },
                Err(_) => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e.into());
                    }
                }
            }
        }
        Ok(self.read_buf.split().freeze())
    }

    /// Reads the response to the request `send` numbered `correlation`.
    pub fn receive<R: Request>(
        &mut self,
        version: i16,
        correlation: i32,
    ) -> Result<R::Response, ClientError> {
        let mut frame = self.read_frame()?;
        let header = ResponseHeader::decode(&mut frame, R::Response::header_version(version))
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if header.correlation_id != correlation {
            return Err(ClientError::Correlation {
                expected: correlation,
                got: header.correlation_id,
            });
        }
        let response = R::Response::decode(&mut frame, version)
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if !frame.is_empty() {
            return Err(ClientError::Decode(format!("{} bytes after the response", frame.len())));
        }
        Ok(response)
    }

    /// `send` then `receive`.
    pub fn call<R: Request>(
        &mut self,
        version: i16,
        request: &R,
    ) -> Result<R::Response, ClientError> {
        let correlation = self.send(version, request)?;
        self.receive::<R>(version, correlation)
    }

    /// Writes raw bytes (for malformed-input tests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }
}

/// A compression codec a producer may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// Encodes `records` as one RecordBatch v2 (base offset 0) as a producer sends it: compressed
/// with `compression`, carrying `producer`'s id, epoch and base sequence.
pub fn record_batch(
    records: &[Record<'_>],
    producer: ProducerInfo,
    compression: Compression,
) -> Vec<u8> {
    let mut plain = Vec::new();
    let mut directory = Vec::new();
    kappa_storage::kafka::encode_batch(0, records, producer, &mut plain, &mut directory);
    let codec = match compression {
        Compression::None => return plain,
        Compression::Gzip => Codec::Gzip,
        Compression::Snappy => Codec::Snappy,
        Compression::Lz4 => Codec::Lz4,
        Compression::Zstd => Codec::Zstd,
    };
    let header = super::records::HEADER_SIZE;
    let mut batch = plain[..header].to_vec();
    batch.extend(compression::compress(codec, &plain[header..]));
    let attributes = i16::from_be_bytes([batch[21], batch[22]]) | codec as i16;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    let length = (batch.len() - 12) as i32;
    batch[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch
}
