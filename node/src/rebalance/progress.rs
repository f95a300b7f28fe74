//! Progress of a range stream (a join's pulls or a decommission's pushes), as plain data:
//! which (range, peer) transfers are done, where each unfinished one stands (the last key
//! moved), and what moved so far. The stream saves it after every page, so a restart of
//! either side resumes at the next page instead of the first (merges are idempotent, so a
//! page moved twice after a crash between the merge and the save is harmless).
//!
//! The saved file is input from disk, so it is checked: a digest over its content, a
//! bound on its size, on the transfers and on the key lengths. A damaged file or one of
//! another change is not an error: the stream starts from the first page again, which is
//! slower but correct.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::placement::TokenRange;

/// The file's name in the data directory.
pub const PROGRESS_FILE: &str = "rebalance-progress.json";

/// Largest progress file read.
const MAX_FILE_BYTES: u64 = 64 << 20;
/// Most transfers a saved progress may list (ranges of a ring times N).
const MAX_TRANSFERS: usize = 1 << 20;
/// Longest resume key accepted from the file.
const MAX_KEY_BYTES: usize = 1 << 16;

/// Which change a stream serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    /// This node joins: it pulls the ranges it will replicate.
    Join,
    /// This node leaves: it pushes the ranges it replicates to the nodes that gain them.
    Leave,
}

impl StreamKind {
    /// `join` or `leave`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Join => "join",
            StreamKind::Leave => "leave",
        }
    }
}

/// One range moved from or to one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Exclusive start token of the range.
    pub start: u64,
    /// Inclusive end token.
    pub end: u64,
    /// The peer's node id (the source of a pull, the target of a push).
    pub peer: String,
    /// The last key moved; the next page starts after it (`None`: from the start).
    pub after: Option<Vec<u8>>,
    /// Finished (or skipped: the peer was dead when its turn came).
    pub done: bool,
    /// About how many records it moves, from an anti-entropy tree (`None`: unknown).
    #[serde(default)]
    pub expected: Option<u64>,
}

impl Transfer {
    /// The range.
    pub fn range(&self) -> TokenRange {
        TokenRange {
            start: self.start,
            end: self.end,
        }
    }
}

/// What a stream has done, for `status` and the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgressSummary {
    /// `join` or `leave`.
    pub kind: &'static str,
    /// The layout version the change committed (this node joining or leaving).
    pub layout_version: u64,
    /// Ranges whose every transfer is done, and all ranges.
    pub ranges_done: usize,
    /// All ranges of the stream.
    pub ranges_total: usize,
    /// Records and bytes moved so far (across restarts).
    pub records: u64,
    /// Bytes of keys and records moved so far.
    pub bytes: u64,
    /// Whether the stream resumed saved progress.
    pub resumed: bool,
    /// Estimated records of the whole stream (`None` until every transfer has one).
    pub records_expected: Option<u64>,
    /// Estimated bytes of the whole stream: `records_expected` at the mean size of the
    /// records moved so far (`None` before the first record).
    pub bytes_expected: Option<u64>,
}

/// The progress of one stream (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamProgress {
    kind: StreamKind,
    version: u64,
    transfers: Vec<Transfer>,
    records: u64,
    bytes: u64,
    #[serde(skip)]
    resumed: bool,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    progress: StreamProgress,
    /// XXH3 of `progress` as JSON: a damaged or hand-edited file is not resumed.
    digest: String,
}

impl StreamProgress {
    /// A stream of `kind` for layout `version` over `transfers` (range, peer id), in the
    /// order given, nothing done yet.
    pub fn plan(
        kind: StreamKind,
        version: u64,
        transfers: impl IntoIterator<Item = (TokenRange, String)>,
    ) -> Self {
        StreamProgress {
            kind,
            version,
            transfers: transfers
                .into_iter()
                .map(|(range, peer)| Transfer {
                    start: range.start,
                    end: range.end,
                    peer,
                    after: None,
                    done: false,
                    expected: None,
                })
                .collect(),
            records: 0,
            bytes: 0,
            resumed: false,
        }
    }

    /// This plan, carrying over what `saved` did if it is the progress of the same change
    /// (same kind and layout version): each transfer also in `saved` keeps its position.
    /// Transfers only in `saved` are dropped (the plan is the truth).
    pub fn resume(mut self, saved: Option<StreamProgress>) -> Self {
        let Some(saved) = saved else { return self };
        if saved.kind != self.kind || saved.version != self.version {
            return self;
        }
        let mut old: BTreeMap<(u64, u64, String), Transfer> = saved
            .transfers
            .into_iter()
            .map(|t| ((t.start, t.end, t.peer.clone()), t))
            .collect();
        let mut carried = false;
        for t in &mut self.transfers {
            if let Some(prev) = old.remove(&(t.start, t.end, t.peer.clone())) {
                carried |= prev.done || prev.after.is_some();
                t.after = prev.after;
                t.done = prev.done;
                t.expected = t.expected.or(prev.expected);
            }
        }
        if carried {
            self.records = saved.records;
            self.bytes = saved.bytes;
            self.resumed = true;
        }
        self
    }

    /// The change this stream serves.
    pub fn kind(&self) -> StreamKind {
        self.kind
    }

    /// Its layout version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every transfer, in order.
    pub fn transfers(&self) -> &[Transfer] {
        &self.transfers
    }

    /// The first unfinished transfer: its index and itself.
    pub fn next(&self) -> Option<(usize, &Transfer)> {
        self.transfers.iter().enumerate().find(|(_, t)| !t.done)
    }

    /// Records a page of transfer `index`: `records` records and `bytes` bytes moved; the
    /// transfer goes on after key `next`, or is done when `next` is `None`.
    pub fn advance(&mut self, index: usize, next: Option<Vec<u8>>, records: u64, bytes: u64) {
        self.records += records;
        self.bytes += bytes;
        if let Some(t) = self.transfers.get_mut(index) {
            t.done = next.is_none();
            t.after = next;
        }
    }

    /// Sets the estimated records of transfer `index`.
    pub fn set_expected(&mut self, index: usize, records: u64) {
        if let Some(t) = self.transfers.get_mut(index) {
            t.expected = Some(records);
        }
    }

    /// Marks transfer `index` done without moving anything (its peer is dead).
    pub fn skip(&mut self, index: usize) {
        if let Some(t) = self.transfers.get_mut(index) {
            t.done = true;
        }
    }

    /// Whether every transfer is done.
    pub fn finished(&self) -> bool {
        self.transfers.iter().all(|t| t.done)
    }

    /// What was done so far.
    pub fn summary(&self) -> ProgressSummary {
        let mut ranges: BTreeMap<(u64, u64), bool> = BTreeMap::new();
        for t in &self.transfers {
            *ranges.entry((t.start, t.end)).or_insert(true) &= t.done;
        }
        let records_expected = self
            .transfers
            .iter()
            .map(|t| t.expected)
            .sum::<Option<u64>>();
        ProgressSummary {
            kind: self.kind.as_str(),
            layout_version: self.version,
            ranges_done: ranges.values().filter(|d| **d).count(),
            ranges_total: ranges.len(),
            records: self.records,
            bytes: self.bytes,
            resumed: self.resumed,
            records_expected,
            bytes_expected: records_expected
                .filter(|_| self.records > 0)
                .map(|e| (e as u128 * self.bytes as u128 / self.records as u128) as u64),
        }
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).unwrap_or_default();
        let disk = OnDisk {
            progress: self.clone(),
            digest: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&body)),
        };
        serde_json::to_vec(&disk).unwrap_or_default()
    }

    /// Reads a file's bytes back, checked (see the module documentation).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(format!(
                "it is {} bytes, the limit is {MAX_FILE_BYTES}",
                bytes.len()
            ));
        }
        let disk: OnDisk = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let p = disk.progress;
        if p.transfers.len() > MAX_TRANSFERS {
            return Err(format!(
                "it lists {} transfers, the limit is {MAX_TRANSFERS}",
                p.transfers.len()
            ));
        }
        if let Some(t) = p
            .transfers
            .iter()
            .find(|t| t.after.as_ref().is_some_and(|k| k.len() > MAX_KEY_BYTES))
        {
            return Err(format!(
                "the resume key of range ({}, {}] is longer than {MAX_KEY_BYTES} bytes",
                t.start, t.end
            ));
        }
        let body = serde_json::to_vec(&p).map_err(|e| e.to_string())?;
        let digest = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&body));
        if digest != disk.digest {
            return Err(format!(
                "its digest says {}, its content hashes to {digest}",
                disk.digest
            ));
        }
        Ok(p)
    }

    /// The progress saved in `dir`, if any; a damaged file is logged and ignored (the
    /// stream starts over, which is correct, only slower).
    pub fn load(dir: &Path) -> Option<Self> {
        let path = dir.join(PROGRESS_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(file = %path.display(), "cannot read the stream progress: {e}; streaming from the first page");
                return None;
            }
        };
        match Self::decode(&bytes) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(file = %path.display(), "the saved stream progress is damaged: {e}; streaming from the first page");
                None
            }
        }
    }

    /// Saves it in `dir` atomically.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        crate::util::write_atomic(dir, PROGRESS_FILE, &self.encode())
    }

    /// Removes the saved progress from `dir` (the change is over).
    pub fn clear(dir: &Path) {
        match std::fs::remove_file(dir.join(PROGRESS_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot remove the stream progress: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> TokenRange {
        TokenRange { start, end }
    }

    fn plan() -> StreamProgress {
        StreamProgress::plan(
            StreamKind::Join,
            7,
            [
                (r(0, 10), "a".to_string()),
                (r(0, 10), "b".to_string()),
                (r(10, 20), "a".to_string()),
            ],
        )
    }

    #[test]
    fn transfers_advance_page_by_page_and_ranges_finish_when_every_peer_is_done() {
        let mut p = plan();
        assert_eq!(p.next().map(|(i, _)| i), Some(0));
        p.advance(0, Some(b"k5".to_vec()), 5, 500);
        let (i, t) = p.next().unwrap();
        assert_eq!((i, t.after.as_deref()), (0, Some(&b"k5"[..])));
        p.advance(0, None, 2, 200);
        assert_eq!(
            p.summary().ranges_done,
            0,
            "b has not given range (0, 10] yet"
        );
        p.skip(1);
        let s = p.summary();
        assert_eq!(
            (s.ranges_done, s.ranges_total, s.records, s.bytes),
            (1, 2, 7, 700)
        );
        p.advance(2, None, 0, 0);
        assert!(p.finished() && p.next().is_none());
        assert_eq!(p.summary().ranges_done, 2);
    }

    #[test]
    fn a_saved_stream_resumes_where_it_stood_only_for_the_same_change() {
        let dir = tempfile::tempdir().unwrap();
        assert!(StreamProgress::load(dir.path()).is_none());
        let mut p = plan();
        p.advance(0, None, 3, 30);
        p.advance(1, Some(b"k9".to_vec()), 9, 90);
        p.save(dir.path()).unwrap();
        let saved = StreamProgress::load(dir.path());
        assert_eq!(saved.as_ref(), Some(&p));

        let resumed = plan().resume(saved.clone());
        assert_eq!(
            resumed.next().map(|(i, t)| (i, t.after.clone())),
            Some((1, Some(b"k9".to_vec())))
        );
        let s = resumed.summary();
        assert!(s.resumed);
        assert_eq!((s.records, s.bytes), (12, 120));

        // Another layout version or kind: from the first page.
        let other = StreamProgress::plan(StreamKind::Join, 8, [(r(0, 10), "a".to_string())]);
        assert_eq!(other.clone().resume(saved.clone()), other);
        let leave = StreamProgress::plan(StreamKind::Leave, 7, [(r(0, 10), "a".to_string())]);
        assert_eq!(leave.clone().resume(saved.clone()), leave);
        // A plan that changed keeps only the transfers in both.
        let changed = StreamProgress::plan(
            StreamKind::Join,
            7,
            [(r(0, 10), "b".to_string()), (r(20, 30), "c".to_string())],
        )
        .resume(saved);
        assert_eq!(changed.transfers()[0].after.as_deref(), Some(&b"k9"[..]));
        assert!(!changed.transfers()[1].done && changed.transfers()[1].after.is_none());

        StreamProgress::clear(dir.path());
        assert!(StreamProgress::load(dir.path()).is_none());
    }

    #[test]
    fn a_damaged_or_oversized_file_is_not_resumed() {
        let mut p = plan();
        p.advance(0, Some(b"k".to_vec()), 1, 1);
        let bytes = p.encode();
        assert_eq!(StreamProgress::decode(&bytes).unwrap(), p);
        let text = String::from_utf8(bytes).unwrap();
        let edited = text.replace("\"records\":1", "\"records\":2");
        assert_ne!(edited, text);
        let err = StreamProgress::decode(edited.as_bytes()).unwrap_err();
        assert!(err.contains("digest"), "{err}");
        assert!(StreamProgress::decode(b"{not json").is_err());

        let mut long = plan();
        long.advance(0, Some(vec![b'x'; MAX_KEY_BYTES + 1]), 1, 1);
        let err = StreamProgress::decode(&long.encode()).unwrap_err();
        assert!(err.contains("longer than"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PROGRESS_FILE), edited).unwrap();
        assert!(StreamProgress::load(dir.path()).is_none());
    }
}
