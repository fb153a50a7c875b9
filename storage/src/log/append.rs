//! The appender half of `PartitionLog`: offsets, and the frame encoded straight into the write
//! buffers (`crate::encode`, one copy of the records' bytes), synchronously in call order; then
//! the wait for the asked durability.

use crate::encode::{self, FrameLayout, Out};
use crate::index::SegmentIndex;
use crate::kafka::{self, BatchPlan, ProducerInfo, Record, Records};
use crate::paths;
use crate::{Durability, Error};

use super::{
    AppendInfo, AppendTicket, PartitionLog, PendingFrame, Segment, State, WriteBuffer, WriteItem,
};

impl PartitionLog {
    /// Appends `records` as one batch and waits until `durability` is reached.
    pub async fn append(
        &self,
        records: &[Record<'_>],
        durability: Durability,
    ) -> Result<AppendInfo, Error> {
        self.append_with(records, ProducerInfo::default(), durability).await
    }

    /// `append` with idempotent-producer fields kept in the stored Kafka batch.
    pub async fn append_with(
        &self,
        records: &[Record<'_>],
        producer: ProducerInfo,
        durability: Durability,
    ) -> Result<AppendInfo, Error> {
        let plan = kafka::plan_batch(records, &self.shared.config.limits)?;
        self.reserve().await;
        let (info, seq_end) = self.append_buffered(records, &plan, producer, None)?;
        self.wait(self.ticket(info, seq_end, durability)).await
    }

    /// Waits until the write queue has room for another batch (backpressure): a producer that
    /// outruns the disk waits here, and memory stays bounded. Returns at once when the log failed
    /// or is closing (the append then reports why).
    pub async fn reserve(&self) {
        let shared = &self.shared;
        shared
            .changed
            .wait_until(|| {
                let st = shared.state.borrow();
                st.queue.len() < shared.config.write_queue_max || st.failure.is_some() || st.closing
            })
            .await;
    }

    /// True when an append would not wait in `reserve`.
    pub fn has_room(&self) -> bool {
        self.shared.state.borrow().queue.len() < self.shared.config.write_queue_max
    }

    /// The synchronous half of an append: assigns offsets and copies the frame into the write
    /// buffer, in call order (so callers that append in order get offsets in order). Then
    /// `wait(ticket)` resolves when `durability` is reached. Use `reserve` first to respect the
    /// write queue bound.
    ///
    /// `append_time_ms` is the caller's wall clock now (storage reads none): the segment keeps
    /// the newest one and age retention measures it. (`append` and `append_with`, for callers
    /// without a clock, leave it unknown: age retention then never deletes the segment, size
    /// retention still does. Never the records' timestamps: those are producers' event times.)
    pub fn append_now(
        &self,
        records: &[Record<'_>],
        producer: ProducerInfo,
        durability: Durability,
        append_time_ms: i64,
    ) -> Result<AppendTicket, Error> {
        self.append_records(records, producer, durability, append_time_ms)
    }

    /// `append_now` for records in any layout (`Records`): the engine hands its producer batches
    /// over as they are, and their bytes are copied once, into the write buffer.
    pub fn append_records<R: Records + ?Sized>(
        &self,
        records: &R,
        producer: ProducerInfo,
        durability: Durability,
        append_time_ms: i64,
    ) -> Result<AppendTicket, Error> {
        let plan = kafka::plan_batch(records, &self.shared.config.limits)?;
        let (info, seq_end) =
            self.append_buffered(records, &plan, producer, Some(append_time_ms))?;
        Ok(self.ticket(info, seq_end, durability))
    }

    fn ticket(&self, info: AppendInfo, seq_end: u64, durability: Durability) -> AppendTicket {
        if durability == Durability::Synced {
            let mut st = self.shared.state.borrow_mut();
            st.want_synced_seq = st.want_synced_seq.max(seq_end);
        }
        self.shared.changed.notify();
        AppendTicket { info, seq_end, durability }
    }

    /// Waits until the append behind `ticket` reached its durability. A fenced log acknowledges
    /// nothing more, even appends whose write had completed.
    pub async fn wait(&self, ticket: AppendTicket) -> Result<AppendInfo, Error> {
        let shared = &self.shared;
        let seq_end = ticket.seq_end;
        match ticket.durability {
            Durability::None => return Ok(ticket.info),
            Durability::Written => {
                shared
                    .changed
                    .wait_until(|| {
                        let st = shared.state.borrow();
                        st.written_seq >= seq_end || st.failure.is_some()
                    })
                    .await;
            }
            Durability::Synced => {
                shared
                    .changed
                    .wait_until(|| {
                        let st = shared.state.borrow();
                        st.synced_seq >= seq_end || st.failure.is_some()
                    })
                    .await;
            }
        }
        let st = shared.state.borrow();
        shared.failed(&st)?;
        Ok(ticket.info)
    }

    /// The synchronous half of an append: offsets, and the frame encoded into the write buffers.
    /// `plan` is `kafka::plan_batch` of `records` (nothing can fail after it: an append either
    /// changes nothing or appends the whole frame).
    fn append_buffered<R: Records + ?Sized>(
        &self,
        records: &R,
        plan: &BatchPlan,
        producer: ProducerInfo,
        append_time_ms: Option<i64>,
    ) -> Result<(AppendInfo, u64), Error> {
        let config = &self.shared.config;
        let mut st = self.shared.state.borrow_mut();
        self.shared.check_usable(&st)?;
        let st = &mut *st;
        let frame_len = FrameLayout::of(plan).frame_len as u64;
        let active = &st.active().index;
        if !active.is_empty() && active.size_bytes + frame_len > config.segment_size_bytes_max {
            self.roll(st);
        }
        let base_offset = st.active().index.next_offset;
        let synced_before = st.synced_position_in_active();
        let position = st.active().index.size_bytes;

        let mut scratch = std::mem::take(&mut st.scratch);
        let mut out = ChainOut {
            counted: st.buffer.len,
            first_item: st.queue.len(),
            frame_start: st.buffer.len,
            max: config.write_buffer_size_bytes,
            st,
        };
        let header = encode::encode_frame(
            &mut out,
            &mut scratch,
            records,
            plan,
            base_offset,
            producer,
            synced_before,
            append_time_ms,
        );
        out.finish();
        st.scratch = scratch;
        debug_assert_eq!(u64::from(header.frame_len), frame_len);

        let active = st.active_mut();
        active.index.push_frame(
            base_offset,
            header.record_count,
            header.max_timestamp,
            header.frame_len,
        );
        // The frame carries the same time, so an index rebuilt by a scan gets it back.
        active.index.append_time_ms = active.index.append_time_ms.max(header.append_time);
        let segment_base = active.index.base_offset;
        let next_offset = active.index.next_offset;
        st.pending.push_back(PendingFrame {
            seq_end: st.appended_seq,
            next_offset,
            segment_base,
            position_end: position + frame_len,
        });
        let info =
            AppendInfo { base_offset, last_offset: next_offset - 1, frame_len: header.frame_len };
        Ok((info, st.appended_seq))
    }

    /// Seals the active segment and starts the next one (the I/O happens in the writer).
    fn roll(&self, st: &mut State) {
        let next_base = st.active().index.next_offset;
        // A buffer holding appended bytes goes to the writer; a carried block alone (an idle
        // buffer) was written already.
        let fresh = WriteBuffer { buf: None, file_pos: 0, len: 0 };
        let tail = std::mem::replace(&mut st.buffer, fresh);
        st.carry.clear();
        if tail.buf.is_some() && tail.len > 0 {
            st.queue.push_back(WriteItem::Data { buf: tail.filled(), seq_end: st.appended_seq });
        } else if let Some(buf) = tail.buf {
            crate::pool::give(buf);
        }
        let sealed = st.active();
        let item = WriteItem::Roll {
            sealed_index: sealed.index.clone(),
            sealed_index_path: paths::index_path(&self.shared.dir, sealed.index.base_offset),
            next_path: paths::segment_path(&self.shared.dir, next_base),
        };
        st.queue.push_back(item);
        let next_path = paths::segment_path(&self.shared.dir, next_base);
        st.segments.push(Segment {
            entries_loaded: true,
            path: next_path,
            index: SegmentIndex::new(next_base, self.shared.config.index_interval_bytes),
        });
    }

    /// Waits until everything appended so far is synced.
    pub async fn sync(&self) -> Result<(), Error> {
        let shared = &self.shared;
        let target = {
            let mut st = shared.state.borrow_mut();
            shared.check_usable(&st)?;
            st.want_synced_seq = st.want_synced_seq.max(st.appended_seq);
            st.appended_seq
        };
        shared.changed.notify();
        shared
            .changed
            .wait_until(|| {
                let st = shared.state.borrow();
                st.synced_seq >= target || st.failure.is_some()
            })
            .await;
        let st = shared.state.borrow();
        shared.check_usable(&st)
    }
}

/// The log's write buffers as the encoder's `Out`: the current buffer (taken from the shard's
/// pool when bytes come), and when it is full, on to the writer's queue and a fresh one. A frame
/// may span several buffers; until the append returns, the writer cannot run (the append is
/// synchronous), so the frame's first bytes can still be patched in buffers already queued.
struct ChainOut<'s> {
    st: &'s mut State,
    /// Bytes of the current buffer that `appended_seq` already counts.
    counted: usize,
    /// The queue index of the first buffer this frame filled (if it fills any).
    first_item: usize,
    /// Where the frame starts in its first buffer.
    frame_start: usize,
    max: usize,
}

impl ChainOut<'_> {
    /// Counts the bytes of the current buffer in `appended_seq`.
    fn finish(&mut self) {
        self.st.appended_seq += (self.st.buffer.len - self.counted) as u64;
        self.counted = self.st.buffer.len;
    }
}

impl Out for ChainOut<'_> {
    #[inline]
    fn current(&mut self, need: usize) -> (&mut [u8], &mut usize) {
        let st = &mut *self.st;
        if st.buffer.buf.is_none() {
            st.buffer.materialize(&mut st.carry, need, st.streaming, self.max);
        }
        let WriteBuffer { buf, len, .. } = &mut st.buffer;
        let buf = buf.as_mut().expect("materialized above");
        debug_assert_eq!(buf.len(), buf.capacity());
        (buf.as_bytes_mut(), len)
    }

    fn next(&mut self) {
        self.finish();
        let st = &mut *self.st;
        // Appends outran the writer and filled a buffer: whole buffers from now on.
        st.streaming = true;
        let next_pos = st.buffer.file_pos + st.buffer.len as u64;
        // The next buffer is taken when the next byte comes.
        let fresh = WriteBuffer { buf: None, file_pos: next_pos, len: 0 };
        let full = std::mem::replace(&mut st.buffer, fresh);
        st.queue.push_back(WriteItem::Data { buf: full.filled(), seq_end: st.appended_seq });
        self.counted = 0;
    }

    fn frame_parts(&mut self, visit: &mut dyn FnMut(&mut [u8])) {
        let st = &mut *self.st;
        let mut from = self.frame_start;
        for item in st.queue.range_mut(self.first_item..) {
            if let WriteItem::Data { buf, .. } = item {
                visit(&mut buf.buf.as_bytes_mut()[from..buf.len]);
                from = 0;
            }
        }
        if let Some(buf) = st.buffer.buf.as_mut() {
            visit(&mut buf.as_bytes_mut()[from..st.buffer.len]);
        }
    }
}
