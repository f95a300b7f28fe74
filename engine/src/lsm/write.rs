//! The write path: group commit of batches into the WAL and the memtable.
//!
//! Writers queue their batch; the first writer that finds no leader becomes the leader,
//! takes every queued batch, writes them to the WAL with one write (and one fsync when
//! the sync policy asks for it), applies them to the memtable, publishes their sequence
//! numbers, and wakes the group. Only the leader rotates the memtable, so a batch always
//! lands whole in one memtable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::codec::{unix_now, Value};
use super::memtable::MemTable;
use super::wal::{self, WalWriter};
use super::{bump, Inner, SuperVersion, SyncPolicy};
use crate::{Error, Result, WriteBatch, WriteOp};

/// Batches waiting for the leader, and the leader's progress.
#[derive(Default)]
pub(crate) struct CommitQueue {
    pending: Vec<(u64, WriteBatch)>,
    next_ticket: u64,
    /// Every ticket <= `done` has been processed (tickets start at 1).
    done: u64,
    leader: bool,
    /// Tickets from this one on failed.
    failed_from: Option<u64>,
    failure: Option<String>,
}

const STALL_WAIT: Duration = Duration::from_millis(50);

impl Inner {
    /// Applies `batch` atomically; returns when it is visible and as durable as the sync
    /// policy promises.
    pub(crate) fn write(&self, mut batch: WriteBatch) -> Result<()> {
        self.check_writable()?;
        if batch.is_empty() {
            return Ok(());
        }
        self.throttle_for_l0()?;
        let mut q = self.commit.lock();
        q.next_ticket += 1;
        let ticket = q.next_ticket;
        // Fast path: no leader and nobody queued, so this writer leads a group of one
        // without queueing its batch or gathering a group (the common case with one
        // writer). Same steps as a group: WAL write (and fsync per policy) before the
        // memtable, before returning. Not with a batch window, whose point is to wait.
        if !q.leader && q.pending.is_empty() && !self.waits_for_group() {
            q.leader = true;
            drop(q);
            let result = self
                .check_writable()
                .and_then(|_| self.commit_group(std::slice::from_mut(&mut batch)));
            return self.finish_group(ticket, ticket, result);
        }
        q.pending.push((ticket, batch));
        while q.leader && q.done < ticket {
            self.commit_cv.wait(&mut q);
        }
        if q.done >= ticket {
            return match q.failed_from {
                Some(f) if ticket >= f => {
                    Err(Error::Poisoned(q.failure.clone().unwrap_or_default()))
                }
                _ => Ok(()),
            };
        }
        q.leader = true;
        if self.waits_for_group() {
            parking_lot::MutexGuard::unlocked(&mut q, || {
                std::thread::sleep(Duration::from_micros(self.opts.batch_window_us))
            });
        }
        let group = std::mem::take(&mut q.pending);
        drop(q);
        let first = group.first().map_or(ticket, |(t, _)| *t);
        let last = group.last().map_or(ticket, |(t, _)| *t);
        let mut batches: Vec<WriteBatch> = group.into_iter().map(|(_, b)| b).collect();
        let result = self
            .check_writable()
            .and_then(|_| self.commit_group(&mut batches));
        self.finish_group(first, last, result)
    }

    /// Whether a leader waits `batch_window_us` for more writers before committing.
    fn waits_for_group(&self) -> bool {
        self.opts.sync == SyncPolicy::Batch && self.opts.batch_window_us > 0
    }

    /// Leader only: records the outcome of the group of tickets `first..=last`, gives up
    /// the leader role and wakes the waiting writers.
    fn finish_group(&self, first: u64, last: u64, result: Result<()>) -> Result<()> {
        let mut q = self.commit.lock();
        if let Err(e) = &result {
            if !matches!(e, Error::Closed) {
                self.poison(e);
            }
            q.failed_from.get_or_insert(first);
            q.failure.get_or_insert_with(|| e.to_string());
        }
        q.done = last;
        q.leader = false;
        self.commit_cv.notify_all();
        result
    }

    /// Writes `batches` to the WAL in one append (and fsyncs it when the policy
    /// asks), then applies them to the memtable and publishes their sequence numbers.
    /// The batches are left empty.
    fn commit_group(&self, batches: &mut [WriteBatch]) -> Result<()> {
        let mut sv = self.current();
        if sv.mem.approx_bytes() as u64 >= self.opts.memtable_size_bytes {
            self.rotate()?;
            sv = self.current();
        }
        let base = self.last_seq.load(Ordering::Relaxed);
        let mut seq = base;
        let mut payload = 0u64;
        let wal_bytes = {
            let mut w = self.wal.lock();
            let n = w.append_encoded(|buf| {
                for b in batches.iter() {
                    wal::encode_batch(buf, seq, b.ops());
                    seq += b.len() as u64;
                    payload += b.payload_bytes() as u64;
                }
            })?;
            if matches!(self.opts.sync, SyncPolicy::Always | SyncPolicy::Batch) {
                w.sync()?;
            }
            n
        };
        let mem = &sv.mem;
        // The deletion time of tombstones, read from the clock once per group and only
        // when the group deletes something.
        let mut now = None;
        let mut s = base;
        for b in batches {
            for op in std::mem::take(b) {
                s += 1;
                match op {
                    WriteOp::Put { key, value } => mem.insert(key, s, Value::Put(value)),
                    WriteOp::Delete { key } => {
                        let deleted_at = *now.get_or_insert_with(unix_now);
                        mem.insert(key, s, Value::Tombstone { deleted_at })
                    }
                }
            }
        }
        self.last_seq.store(seq, Ordering::Relaxed);
        self.visible_seq.store(seq, Ordering::Release);
        bump(&self.stats.writes, seq - base);
        bump(&self.stats.user_bytes, payload);
        bump(&self.stats.wal_bytes, wal_bytes as u64);
        Ok(())
    }

    /// Leader only: freezes the active memtable, waiting for a free immutable slot first.
    fn rotate(&self) -> Result<()> {
        let mut g = self.bg.lock();
        let mut stalled = false;
        while self.current().imms.len() >= self.opts.max_immutable_memtables {
            self.check_writable()?;
            if !stalled {
                stalled = true;
                bump(&self.stats.write_stalls, 1);
            }
            self.bg_cv.wait_for(&mut g, STALL_WAIT);
        }
        drop(g);
        let id = self.next_file.fetch_add(1, Ordering::Relaxed);
        let new_wal = WalWriter::create(&self.dir, id)?;
        {
            let mut w = self.wal.lock();
            w.sync()?;
            *w = new_wal;
        }
        {
            let mut sv = self.sv.write();
            let mut imms = sv.imms.clone();
            imms.push(sv.mem.clone());
            *sv = Arc::new(SuperVersion {
                mem: Arc::new(MemTable::new(id)),
                imms,
                version: sv.version.clone(),
                tables: sv.tables.clone(),
            });
        }
        self.notify_bg();
        Ok(())
    }

    /// Takes the leader role (waiting for the current leader), runs `f`, gives it back.
    fn as_leader<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut q = self.commit.lock();
        while q.leader {
            self.commit_cv.wait(&mut q);
        }
        q.leader = true;
        drop(q);
        let r = f();
        let mut q = self.commit.lock();
        q.leader = false;
        self.commit_cv.notify_all();
        r
    }

    /// Freezes the active memtable if it holds anything.
    pub(crate) fn force_rotation(&self) -> Result<()> {
        self.as_leader(|| {
            self.check_writable()?;
            if self.current().mem.is_empty() {
                return Ok(());
            }
            self.rotate()
        })
    }

    /// Waits for an in-flight group to finish, then fsyncs the WAL (used by close).
    pub(crate) fn wait_for_leader_then_sync(&self) -> Result<()> {
        self.as_leader(|| self.wal.lock().sync_and_trim())
    }

    /// Delays or blocks a writer while L0 holds too many files that compaction could
    /// reduce; memory and read cost stay bounded when writes outpace compaction.
    fn throttle_for_l0(&self) -> Result<()> {
        let sv = self.current();
        let l0 = sv.version.levels.first().map_or(0, Vec::len);
        if l0 < self.opts.l0_slowdown_files || self.policy.pick(&sv.version).is_none() {
            return Ok(());
        }
        if l0 < self.opts.l0_stop_files {
            // The delay grows from 50 µs at the slowdown mark towards 1 ms near the stop
            // mark, so writes ease off instead of falling off a cliff.
            bump(&self.stats.write_slowdowns, 1);
            let over = (l0 + 1 - self.opts.l0_slowdown_files) as u64;
            let span = (self.opts.l0_stop_files + 1 - self.opts.l0_slowdown_files) as u64;
            std::thread::sleep(Duration::from_micros(50 + 950 * over / span));
            return Ok(());
        }
        bump(&self.stats.write_stalls, 1);
        let mut g = self.bg.lock();
        loop {
            self.check_writable()?;
            let v = self.current().version.clone();
            if v.levels.first().map_or(0, Vec::len) < self.opts.l0_stop_files
                || self.policy.pick(&v).is_none()
            {
                return Ok(());
            }
            self.bg_cv.wait_for(&mut g, STALL_WAIT);
        }
    }
}
