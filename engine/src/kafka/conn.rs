//! One Kafka client connection: framing, request dispatch, responses in request order.
//!
//! A reader task reads size-prefixed frames (refusing any larger than `request_bytes_max`, and
//! reserving the frame's bytes from the shard's budget before allocating them), decodes the
//! header, and turns each request into a `Reply` future; a writer task awaits the replies in
//! order and writes them. As in Kafka, requests of one connection are answered one at a time in
//! order (a long-poll Fetch or a JoinGroup delays what follows it). Produce is the exception that
//! keeps pipelining cheap: the reader starts its appends at once (offsets are assigned in arrival
//! order), and only the acknowledgement waits its turn. At most `in_flight_per_connection`
//! replies are queued; past that the reader stops reading (backpressure on the client).
//!
//! A request the protocol cannot answer (unknown API, unsupported version of anything but
//! ApiVersions, a frame that does not decode) closes the connection, as Kafka does.

use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use bytes::Bytes;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::FutureExt;
use glommio::net::TcpStream;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    DescribeGroupsRequest, FetchRequest, FindCoordinatorRequest, HeartbeatRequest,
    InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest,
    ListOffsetsRequest, MetadataRequest, OffsetCommitRequest, OffsetFetchRequest, ProduceRequest,
    RequestHeader, SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::codec::{self, code, encode_response, EncodeError};
use super::node::{ConnectionGuard, Node};
use super::util::{Event, Held, LocalFuture};
use super::{admin, fetch, group, offsets, produce};

/// Frames to write for one response, and the budget they hold until written.
pub(crate) struct Response {
    pub(crate) frames: Vec<Bytes>,
    pub(crate) hold: Option<Held>,
}

/// What the writer does with one request's reply.
pub(crate) enum Outcome {
    Send(Response),
    /// acks=0 Produce: no response at all.
    Nothing,
    Close(String),
}

impl Outcome {
    pub(crate) fn encoded(frame: Result<Bytes, EncodeError>) -> Outcome {
        match frame {
            Ok(frame) => Outcome::Send(Response { frames: vec![frame], hold: None }),
            Err(e) => Outcome::Close(e.to_string()),
        }
    }
}

/// The pending reply of one request.
pub(crate) type Reply = LocalFuture<'static, Outcome>;

/// Shared by a connection's reader and writer: set when either side is done.
#[derive(Default)]
struct Ending {
    done: Cell<bool>,
    event: Event,
}

impl Ending {
    fn end(&self) {
        self.done.set(true);
        self.event.notify();
    }
    async fn wait(&self) {
        self.event.wait_until(|| self.done.get()).await
    }
}

/// Serves one connection until the client leaves, a protocol error, or the node closes.
pub(crate) async fn serve(node: Rc<Node>, stream: TcpStream, id: u64, guard: ConnectionGuard) {
    let _guard = guard;
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(node.config().idle_timeout));
    let _ = stream.set_write_timeout(Some(node.config().idle_timeout));
    tracing::debug!(shard = node.index, connection = id, %peer, "Kafka client connected");
    let fd = stream.as_raw_fd();
    let (reader, writer) = futures_lite::io::split(stream);
    let (tx, rx) = glommio::channels::local_channel::new_bounded::<Reply>(
        node.config().in_flight_per_connection,
    );
    let ending = Rc::new(Ending::default());
    let writer_task =
        glommio::spawn_local(write_loop(node.clone(), writer, fd, rx, ending.clone()));
    let host = format!("/{}", peer.rsplit_once(':').map_or(peer.as_str(), |(ip, _)| ip));
    let reason = async { read_loop(&node, reader, tx, &host, fd).await }
        .or(async {
            ending.wait().await;
            "the writer stopped".to_string()
        })
        .or(async {
            node.until_closing().await;
            "the listener is closing".to_string()
        })
        .await;
    writer_task.await;
    ending.end();
    tracing::debug!(shard = node.index, connection = id, %peer, reason, "Kafka client disconnected");
}

/// The most frames one `sendmsg` takes (well under the kernel's `IOV_MAX` of 1024).
const IOV_BATCH: usize = 64;

/// Where a write of `frames` stands after `sent` more bytes left from frame `*frame` at byte
/// `*at`: moves on to the first byte not sent.
fn advance(frames: &[Bytes], frame: &mut usize, at: &mut usize, mut sent: usize) {
    while *frame < frames.len() && sent >= frames[*frame].len() - *at {
        sent -= frames[*frame].len() - *at;
        *frame += 1;
        *at = 0;
    }
    *at += sent;
}

/// One non-blocking vectored send of `frames` (up to `IOV_BATCH` of them), the first from byte
/// `at`: (bytes the socket buffer took now, bytes offered).
fn send_now(fd: RawFd, frames: &[Bytes], at: usize) -> std::io::Result<(usize, usize)> {
    #[cfg(test)]
    tests::SENDS.with(|c| c.set(c.get() + 1));
    let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; IOV_BATCH];
    let mut n = 0;
    let mut offered = 0;
    for (i, frame) in frames.iter().take(IOV_BATCH).enumerate() {
        let bytes = if i == 0 { &frame[at..] } else { &frame[..] };
        iov[n] =
            libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
        n += 1;
        offered += bytes.len();
    }
    // SAFETY: a zeroed msghdr is valid (no name, no control data); `iov[..n]` points into
    // `frames`, which outlive the call, and the kernel only reads through it.
    let sent = unsafe {
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = iov.as_mut_ptr();
        hdr.msg_iovlen = n as _;
        libc::sendmsg(fd, &hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    let sent = usize::try_from(sent).map_err(|_| std::io::Error::last_os_error())?;
    Ok((sent, offered))
}

/// Writes a response's frames in order with as few system calls as the socket allows: vectored
/// sends of all of them (a fetch response is a head, each batch, a tail: one `sendmsg`, not one
/// send per part). When the socket buffer fills up, the rest of the frame the send stopped in
/// goes through the stream, which sleeps until the socket has room (and keeps the connection's
/// write timeout); then the vectored sends go on. The stream buffers nothing, so the bytes stay
/// in order.
async fn write_frames(
    writer: &mut futures_lite::io::WriteHalf<TcpStream>,
    fd: RawFd,
    frames: &[Bytes],
) -> std::io::Result<()> {
    let (mut frame, mut at) = (0usize, 0usize);
    while frame < frames.len() {
        let short = match send_now(fd, &frames[frame..], at) {
            Ok((sent, offered)) => {
                advance(frames, &mut frame, &mut at, sent);
                sent < offered
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
            Err(e) => return Err(e),
        };
        if short && frame < frames.len() {
            writer.write_all(&frames[frame][at..]).await?;
            frame += 1;
            at = 0;
        }
    }
    Ok(())
}

async fn write_loop(
    node: Rc<Node>,
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    fd: RawFd,
    rx: glommio::channels::local_channel::LocalReceiver<Reply>,
    ending: Rc<Ending>,
) {
    loop {
        let next = async { rx.recv().await }
            .or(async {
                node.until_closing().await;
                None
            })
            .await;
        let Some(reply) = next else { break };
        let outcome = async { Some(reply.await) }
            .or(async {
                node.until_closing().await;
                None
            })
            .await;
        match outcome {
            None => break,
            Some(Outcome::Nothing) => {}
            Some(Outcome::Close(reason)) => {
                tracing::warn!(shard = node.index, reason, "closing a Kafka connection");
                break;
            }
            Some(Outcome::Send(Response { frames, hold })) => {
                let failed = write_frames(&mut writer, fd, &frames).await.is_err();
                tracing::trace!(parts = frames.len(), "kafka response written");
                // The response's bytes leave the budget once written.
                drop(frames);
                drop(hold);
                if failed {
                    break;
                }
            }
        }
    }
    let _ = writer.close().await;
    ending.end();
}

/// Bytes of a frame the stream reads into (zeroed first) when the socket has none: the rest goes
/// straight into the buffer's spare capacity.
const WAIT_READ_BYTES: usize = 4 << 10;

/// The most bytes a frame's read waits for at once (`SO_RCVLOWAT`).
const WAIT_FOR_BYTES_MAX: usize = 256 << 10;

/// Reads `size` bytes into `buffer` (empty, with room for them) without zeroing the memory they
/// overwrite (zeroing each request's megabyte cost 3% of a shard's CPU). While the socket has
/// bytes, non-blocking `recv`s write them straight into the buffer's spare capacity; when it has
/// none, the stream reads at most `WAIT_READ_BYTES` into a zeroed part of it, sleeping until bytes
/// come (and keeping the connection's read timeout). The stream buffers nothing, so the bytes stay
/// in order.
///
/// While it waits, the socket is readable only once the rest of the frame, or
/// `WAIT_FOR_BYTES_MAX` of it, has arrived (`SO_RCVLOWAT`; the kernel grows the receive buffer to
/// hold that and wakes the reader anyway when memory runs short): a 1 MB request wakes the shard
/// a few times instead of once per loopback segment (about 40 times; on a loaded machine each
/// wake waits for the CPU, 0.3-0.6 ms measured). Set back to 1 byte once the frame is in.
async fn read_frame(
    reader: &mut futures_lite::io::ReadHalf<TcpStream>,
    fd: RawFd,
    buffer: &mut bytes::BytesMut,
    size: usize,
) -> std::io::Result<()> {
    debug_assert!(buffer.is_empty());
    buffer.reserve(size);
    let mut low_water = 1usize;
    let result = read_frame_waiting(reader, fd, buffer, size, &mut low_water).await;
    if low_water != 1 {
        set_receive_low_water(fd, 1);
    }
    result
}

/// `SO_RCVLOWAT` of `fd` to `bytes`; a refusal only costs wakeups, so it is ignored.
fn set_receive_low_water(fd: RawFd, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads one c_int from the pointer, which points at `value`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

async fn read_frame_waiting(
    reader: &mut futures_lite::io::ReadHalf<TcpStream>,
    fd: RawFd,
    buffer: &mut bytes::BytesMut,
    size: usize,
    low_water: &mut usize,
) -> std::io::Result<()> {
    while buffer.len() < size {
        let at = buffer.len();
        let spare = &mut buffer.spare_capacity_mut()[..size - at];
        // SAFETY: the kernel writes at most `spare.len()` bytes at the pointer, which points into
        // the buffer's spare capacity (valid for writes of that many bytes; nothing reads it).
        let got =
            unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT) };
        match usize::try_from(got) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                // SAFETY: the kernel initialized these `n` bytes just past `len` (n <= spare).
                unsafe { buffer.set_len(at + n) };
                continue;
            }
            Err(_) => {}
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => {
                let want = (size - at).min(WAIT_FOR_BYTES_MAX);
                if want != *low_water {
                    set_receive_low_water(fd, want);
                    *low_water = want;
                }
                #[cfg(test)]
                tests::WAITS.with(|c| c.set(c.get() + 1));
                let wait = (size - at).min(WAIT_READ_BYTES);
                #[cfg(test)]
                tests::ZEROED.with(|c| c.set(c.get() + wait as u64));
                buffer.resize(at + wait, 0);
                let n = reader.read(&mut buffer[at..]).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buffer.truncate(at + n);
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

/// Reads frames and queues their replies; returns why it stopped.
async fn read_loop(
    node: &Rc<Node>,
    mut reader: futures_lite::io::ReadHalf<TcpStream>,
    tx: glommio::channels::local_channel::LocalSender<Reply>,
    peer: &str,
    fd: RawFd,
) -> String {
    loop {
        let mut size = [0u8; 4];
        if let Err(e) = reader.read_exact(&mut size).await {
            return format!("reading: {e}");
        }
        let size = i32::from_be_bytes(size);
        let max = node.config().request_bytes_max;
        let Ok(size) = usize::try_from(size) else {
            return format!("negative frame size {size}");
        };
        if size < 8 || size > max {
            tracing::warn!(
                shard = node.index,
                size,
                max,
                "refusing a Kafka request frame of {size} bytes (request_bytes_max {max})"
            );
            return format!("frame size {size} outside 8..={max}");
        }
        let hold = node.budget.reserve(size).await;
        let mut buffer = node.buffers.take(size);
        if let Err(e) = read_frame(&mut reader, fd, &mut buffer, size).await {
            return format!("reading a request: {e}");
        }
        tracing::trace!(size, "kafka request read");
        let body = buffer.split().freeze();
        node.buffers.keep(buffer, size);
        let reply = match handle(node, body, peer).await {
            Ok(reply) => reply,
            Err(reason) => {
                tracing::warn!(shard = node.index, reason, "closing a Kafka connection");
                return reason;
            }
        };
        // The request's bytes stay reserved until its reply is done.
        let reply: Reply = Box::pin(async move {
            let outcome = reply.await;
            drop(hold);
            outcome
        });
        if tx.send(reply).await.is_err() {
            return "the writer stopped".into();
        }
    }
}

/// A reply future for a handler whose response is a `kafka-protocol` message.
fn respond<R, F>(api: ApiKey, version: i16, correlation_id: i32, work: F) -> Reply
where
    R: Encodable + 'static,
    F: std::future::Future<Output = R> + 'static,
{
    Box::pin(async move {
        let response = work.await;
        Outcome::encoded(encode_response(api, version, correlation_id, &response))
    })
}

fn decode<T: Decodable>(buf: &mut Bytes, version: i16, api: ApiKey) -> Result<T, String> {
    T::decode(buf, version).map_err(|e| format!("malformed {api:?} v{version} request: {e}"))
}

/// Decodes one request frame and starts its handling.
pub(crate) async fn handle(node: &Rc<Node>, frame: Bytes, peer: &str) -> Result<Reply, String> {
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Some((min, max)) = codec::supported(api_key) else {
        return Err(format!("unsupported API key {api_key}"));
    };
    let api = ApiKey::try_from(api_key).map_err(|_| format!("unknown API key {api_key}"))?;
    if !(min..=max).contains(&version) {
        if api == ApiKey::ApiVersions {
            // The client learns our versions from a v0 answer and retries with one of them.
            let body = codec::api_versions(code::UNSUPPORTED_VERSION);
            return Ok(Box::pin(async move {
                Outcome::encoded(encode_response(api, 0, correlation_id, &body))
            }));
        }
        return Err(format!("{api:?} v{version} is not supported (versions {min}-{max})"));
    }
    if api == ApiKey::Produce && version < 3 {
        return match produce::refuse_legacy(version, correlation_id, frame.slice(8..)) {
            Some(response) => Ok(Box::pin(async move {
                Outcome::Send(Response { frames: vec![response], hold: None })
            })),
            None => Err(format!("malformed Produce v{version} request")),
        };
    }
    let mut buf = frame;
    let header = RequestHeader::decode(&mut buf, api.request_header_version(version))
        .map_err(|e| format!("malformed {api:?} v{version} request header: {e}"))?;
    let client = group::api::Client {
        id: header.client_id.map(|c| c.to_string()).unwrap_or_default(),
        host: peer.to_string(),
    };
    let node = node.clone();
    let reply = match api {
        ApiKey::ApiVersions => {
            let body = codec::api_versions(code::NONE);
            respond(api, version, correlation_id, async move { body })
        }
        ApiKey::Produce => {
            let request: ProduceRequest = decode(&mut buf, version, api)?;
            return Ok(produce::dispatch(&node, version, correlation_id, request).await);
        }
        ApiKey::Fetch => {
            let request: FetchRequest = decode(&mut buf, version, api)?;
            fetch::handle(node, version, correlation_id, request)
        }
        ApiKey::ListOffsets => {
            let request: ListOffsetsRequest = decode(&mut buf, version, api)?;
            respond(api, version, correlation_id, offsets::list_offsets(node, version, request))
        }
        ApiKey::Metadata => {
            let request: MetadataRequest = decode(&mut buf, version, api)?;
            respond(api, version, correlation_id, admin::metadata(node, version, request))
        }
        ApiKey::CreateTopics => {
            let request: CreateTopicsRequest = decode(&mut buf, version, api)?;
            respond(api, version, correlation_id, admin::create_topics(node, version, request))
        }
        ApiKey::DeleteTopics => {
            let request: DeleteTopicsRequest = decode(&mut buf, version, api)?;
            respond(api, version, correlation_id, admin::delete_topics(node, version, request))
        }
        ApiKey::DescribeConfigs => {
            let request: DescribeConfigsRequest = decode(&mut buf, version, api)?;
            respond(api, version, correlation_id, admin::describe_configs(node, version, request))
        }
        ApiKey::InitProducerId => {
            let request: InitProducerIdRequest = decode(&mut buf, version, api)?;
            respond(api, version, correlation_id, admin::init_producer_id(node, version, request))
        }
        ApiKey::FindCoordinator => {
            let request: FindCoordinatorRequest = decode(&mut buf, version, api)?;
            respond(
                api,
                version,
                correlation_id,
                group::api::find_coordinator(node, version, request),
            )
        }
        ApiKey::JoinGroup => {
            let request: JoinGroupRequest = decode(&mut buf, version, api)?;
            respond(api, version, correlation_id, group::api::join(node, version, request, client))
        }
        ApiKey::SyncGroup => {
            let request: SyncGroupRequest = decode(&mut buf, version, api)?;
            respond(api, version, correlation_id, group::api::sync(node, version, request))
        }
        ApiKey::Heartbeat => {
            let request: HeartbeatRequest = decode(&mut buf, version, api)?;
            respond(api, version, correlation_id, group::api::heartbeat(node, version, request))
        }
        ApiKey::LeaveGroup => {
            let request: LeaveGroupRequest = decode(&mut buf, version, api)?;
            respond(api, version, correlation_id, group::api::leave(node, version, request))
        }
        ApiKey::OffsetCommit => {
            let request: OffsetCommitRequest = decode(&mut buf, version, api)?;
            respond(api, version, correlation_id, group::api::offset_commit(node, version, request))
        }
        ApiKey::OffsetFetch => {
            let request: OffsetFetchRequest = decode(&mut buf, version, api)?;
            respond(api, version, correlation_id, group::api::offset_fetch(node, version, request))
        }
        ApiKey::DescribeGroups => {
            let request: DescribeGroupsRequest = decode(&mut buf, version, api)?;
            respond(api, version, correlation_id, group::api::describe(node, version, request))
        }
        ApiKey::ListGroups => {
            let request: ListGroupsRequest = decode(&mut buf, version, api)?;
            respond(api, version, correlation_id, group::api::list(node, version, request))
        }
        other => return Err(format!("{other:?} is not served")),
    };
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// `send_now` calls on this thread: a writer that retries a full socket in a loop
        /// instead of sleeping on the stream makes thousands.
        pub(super) static SENDS: Cell<u64> = const { Cell::new(0) };
        /// Bytes `read_frame` zeroed on this thread before the stream read into them.
        pub(super) static ZEROED: Cell<u64> = const { Cell::new(0) };
        /// Times `read_frame` found the socket empty mid-frame and waited, on this thread.
        pub(super) static WAITS: Cell<u64> = const { Cell::new(0) };
    }

    /// A 2 MiB frame sent in 8 KiB pieces with pauses: the reader waits for the rest of the frame
    /// (or 256 KiB of it) at a time, not for each piece (fails without `SO_RCVLOWAT`: about 256
    /// waits), and the next frame's size prefix is read at once (the low water mark is back to 1
    /// byte: fails with it left at the frame's rest, where a small frame would wait for bytes
    /// that never come).
    #[test]
    fn a_frame_arriving_in_pieces_wakes_the_reader_a_few_times() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let size = 2 << 20;
        let frame: Vec<u8> = (0..size).map(|j| (j * 31) as u8).collect();
        let sent = frame.clone();
        let writer = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().expect("accept");
            for piece in sent.chunks(8 << 10) {
                socket.write_all(piece).expect("write");
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            // Then, once the reader waits for it, a 5-byte frame; the connection stays open.
            std::thread::sleep(std::time::Duration::from_millis(300));
            socket.write_all(b"tail!").expect("write");
            std::thread::sleep(std::time::Duration::from_secs(3));
        });
        let (got, waits, tail) = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let stream = TcpStream::connect(addr).await.expect("connect");
                stream.set_read_timeout(Some(std::time::Duration::from_secs(2))).expect("timeout");
                let fd = stream.as_raw_fd();
                let (mut reader, _writer) = futures_lite::io::split(stream);
                let before = WAITS.with(Cell::get);
                let mut buffer = bytes::BytesMut::new();
                read_frame(&mut reader, fd, &mut buffer, size).await.expect("read");
                let waits = WAITS.with(Cell::get) - before;
                let mut tail = [0u8; 5];
                reader.read_exact(&mut tail).await.expect("the next frame is read at once");
                (buffer.to_vec(), waits, tail)
            })
            .expect("executor")
            .join()
            .expect("join");
        writer.join().expect("writer");
        assert!(got == frame, "the frame arrived changed");
        assert_eq!(&tail, b"tail!");
        assert!(waits <= 24, "{waits} waits for a 2 MiB frame: woken for each piece");
    }

    /// Frames sent in pieces of every size, with pauses (the reader finds the socket empty
    /// mid-frame many times), and back to back: each arrives whole and in order, and the reader
    /// zeroes only the small parts the stream reads into while it waits, not each frame (fails
    /// when `read_frame` zeroes the frame before reading it: 3% of a shard's CPU at 1 MB frames).
    #[test]
    fn frames_are_read_whole_without_zeroing_them() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sizes = [1usize, 4096, 70_000, 1 << 20, 3 << 20, 5, 1 << 20];
        let frames: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (j * 7 + i * 13) as u8).collect())
            .collect();
        let sent = frames.clone();
        let writer = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().expect("accept");
            for (i, frame) in sent.iter().enumerate() {
                if i % 2 == 0 {
                    // In pieces of growing size, with pauses.
                    let (mut at, mut piece) = (0, 1);
                    while at < frame.len() {
                        let end = (at + piece).min(frame.len());
                        socket.write_all(&frame[at..end]).expect("write");
                        at = end;
                        piece = piece * 3 + 1;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                } else {
                    socket.write_all(frame).expect("write");
                }
            }
        });
        let total: usize = sizes.iter().sum();
        let (got, zeroed) = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let stream = TcpStream::connect(addr).await.expect("connect");
                let fd = stream.as_raw_fd();
                let (mut reader, _writer) = futures_lite::io::split(stream);
                let before = ZEROED.with(Cell::get);
                let mut got = Vec::new();
                for size in sizes {
                    let mut buffer = bytes::BytesMut::new();
                    read_frame(&mut reader, fd, &mut buffer, size).await.expect("read");
                    got.push(buffer.to_vec());
                }
                (got, ZEROED.with(Cell::get) - before)
            })
            .expect("executor")
            .join()
            .expect("join");
        writer.join().expect("writer");
        assert_eq!(got.len(), frames.len());
        for (i, (got, sent)) in got.iter().zip(&frames).enumerate() {
            assert!(got == sent, "frame {i} ({} bytes) arrived changed", sent.len());
        }
        assert!(
            (zeroed as usize) < total / 4,
            "{zeroed} of {total} bytes zeroed before reading: the frames were zeroed"
        );
    }

    /// More than the socket buffers hold, to a reader that drains slowly: the sends come up
    /// short many times, and every byte still arrives once, in order. A send that comes up
    /// short hands the rest of its frame to the stream, which sleeps until the socket has room:
    /// at most one vectored send per frame (fails when the writer retries the full socket
    /// instead, a busy loop on the shard thread that still delivers every byte).
    #[test]
    fn a_response_reaches_a_slow_reader_whole_and_in_order() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let frames: Vec<Bytes> = (0..41u32)
            .map(|i| {
                let len = if i % 2 == 0 { 7 + i as usize } else { 300_000 + i as usize };
                Bytes::from((0..len).map(|j| (i as usize * 31 + j) as u8).collect::<Vec<u8>>())
            })
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        let reader = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().expect("accept");
            let (mut got, mut buf) = (Vec::new(), vec![0u8; 256 * 1024]);
            loop {
                std::thread::sleep(std::time::Duration::from_millis(2));
                match socket.read(&mut buf).expect("read") {
                    0 => return got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let frame_count = frames.len() as u64;
        let sends = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let stream = TcpStream::connect(addr).await.expect("connect");
                let fd = stream.as_raw_fd();
                let (_reader, mut writer) = futures_lite::io::split(stream);
                let before = SENDS.with(Cell::get);
                write_frames(&mut writer, fd, &frames).await.expect("written");
                writer.close().await.expect("closed");
                SENDS.with(Cell::get) - before
            })
            .expect("executor")
            .join()
            .expect("join");
        let got = reader.join().expect("reader");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes arrived out of order");
        assert!(sends <= frame_count + 1, "{sends} sends for {frame_count} frames: a busy loop");
    }

    #[test]
    fn advance_lands_on_the_first_byte_not_sent() {
        let frames: Vec<Bytes> = [&b"head"[..], b"", b"batch-one", b"x"]
            .iter()
            .map(|b| Bytes::copy_from_slice(b))
            .collect();
        let walk = |from: (usize, usize), sent: usize| {
            let (mut frame, mut at) = from;
            advance(&frames, &mut frame, &mut at, sent);
            (frame, at)
        };
        assert_eq!(walk((0, 0), 0), (0, 0));
        assert_eq!(walk((0, 0), 3), (0, 3));
        // The end of a frame moves past it and past an empty frame after it.
        assert_eq!(walk((0, 0), 4), (2, 0));
        assert_eq!(walk((0, 2), 2 + 5), (2, 5));
        assert_eq!(walk((2, 5), 4), (3, 0));
        assert_eq!(walk((0, 0), 14), (4, 0));
    }
}
