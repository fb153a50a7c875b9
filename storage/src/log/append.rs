//! The appender half of `PartitionLog`: offsets, encoding and the copy into the write buffer,
//! synchronously in call order, then the wait for the asked durability.

use crate::index::SegmentIndex;
use crate::kafka::{ProducerInfo, Record};
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
        self.shared.state.borrow().encoder.check(records)?;
        self.reserve().await;
        let (info, seq_end) = self.append_buffered(records, producer, None)?;
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
    /// without a clock, use the batch's newest record timestamp instead.)
    pub fn append_now(
        &self,
        records: &[Record<'_>],
        producer: ProducerInfo,
        durability: Durability,
        append_time_ms: i64,
    ) -> Result<AppendTicket, Error> {
        let (info, seq_end) = self.append_buffered(records, producer, Some(append_time_ms))?;
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

    /// The synchronous half of an append: offsets, encoding, copy into the write buffer.
    fn append_buffered(
        &self,
        records: &[Record<'_>],
        producer: ProducerInfo,
        append_time_ms: Option<i64>,
    ) -> Result<(AppendInfo, u64), Error> {
        let config = &self.shared.config;
        let mut st = self.shared.state.borrow_mut();
        self.shared.check_usable(&st)?;
        let st = &mut *st;
        let base_offset = st.active().index.next_offset;
        let synced_before = st.synced_position_in_active();
        st.encoder.set_synced_before(synced_before);
        let mut header = *st.encoder.encode(base_offset, records, producer)?;
        let frame_len = u64::from(header.frame_len);

        let active = &st.active().index;
        if !active.is_empty() && active.size_bytes + frame_len > config.segment_size_bytes_max {
            self.roll(st);
            if synced_before != 0 {
                // Nothing of the new segment is synced (once per roll: the payload is hashed
                // again).
                header = *st.encoder.restamp_synced_before(0);
            }
        }

        let position = st.active().index.size_bytes;
        let mut frame = st.encoder.frame();
        while !frame.is_empty() {
            let max = config.write_buffer_size_bytes;
            let streaming = st.streaming;
            let at = st.buffer.len;
            // Field access: `frame` still borrows the encoder.
            let buf = st.buffer.materialize(&mut st.carry, frame.len(), streaming, max);
            let capacity = buf.capacity();
            let n = (capacity - at).min(frame.len());
            buf.as_bytes_mut()[at..at + n].copy_from_slice(&frame[..n]);
            st.buffer.len += n;
            st.appended_seq += n as u64;
            frame = &frame[n..];
            if st.buffer.len == capacity {
                // Appends outran the writer and filled a buffer: whole buffers from now on.
                st.streaming = true;
                let next_pos = st.buffer.file_pos + capacity as u64;
                // The next buffer is taken when the next byte comes.
                let fresh = WriteBuffer { buf: None, file_pos: next_pos, len: 0 };
                let full = std::mem::replace(&mut st.buffer, fresh);
                st.queue
                    .push_back(WriteItem::Data { buf: full.filled(), seq_end: st.appended_seq });
            }
        }
        let active = st.active_mut();
        active.index.push_frame(
            base_offset,
            header.record_count,
            header.max_timestamp,
            header.frame_len,
        );
        let append_time = append_time_ms.unwrap_or(header.max_timestamp);
        active.index.append_time_ms = active.index.append_time_ms.max(append_time);
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
