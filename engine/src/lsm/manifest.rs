//! The manifest: which SSTables are live, at which level.
//!
//! `MANIFEST` is a log of CRC-framed [`Edit`]s, each appended and fsynced before the
//! engine acts on it. At open the log is replayed and replaced by a one-edit snapshot
//! written to `MANIFEST.tmp`, fsynced and renamed over it, so the live set changes
//! atomically: a crash leaves either the old or the new set, never a mixture.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::codec::{self, Cursor};
use super::wal::sync_dir;
use crate::{Error, Result};

/// Metadata of one SSTable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// File number (`NNNNNN.sst`).
    pub id: u64,
    /// Size on disk in bytes.
    pub size: u64,
    /// Smallest key in the table.
    pub smallest: Vec<u8>,
    /// Largest key in the table.
    pub largest: Vec<u8>,
    /// Smallest sequence number in the table.
    pub min_seq: u64,
    /// Largest sequence number in the table.
    pub max_seq: u64,
    /// Number of entries (versions) in the table.
    pub entries: u64,
}

impl FileMeta {
    /// True when the key range of this file intersects `[smallest, largest]`.
    pub fn overlaps(&self, smallest: &[u8], largest: &[u8]) -> bool {
        self.smallest.as_slice() <= largest && smallest <= self.largest.as_slice()
    }

    /// True when `key` lies within the file's key range.
    pub fn covers(&self, key: &[u8]) -> bool {
        self.smallest.as_slice() <= key && key <= self.largest.as_slice()
    }
}

/// The live files, per level. L0 files may overlap and are ordered newest first (by
/// largest sequence number); files of L1 and below do not overlap and are ordered by key.
/// Data in L0 is newer than data in L1, which is newer than data in L2, and so on.
#[derive(Clone, Debug, Default)]
pub struct Version {
    /// Files per level; `levels[0]` is L0.
    pub levels: Vec<Vec<Arc<FileMeta>>>,
}

impl Version {
    /// An empty version with `n` levels.
    pub fn empty(n: usize) -> Self {
        Version {
            levels: vec![Vec::new(); n],
        }
    }

    /// The version after `edit`.
    pub fn apply(&self, edit: &Edit) -> Version {
        let mut levels = self.levels.clone();
        for (level, id) in &edit.deleted {
            if let Some(l) = levels.get_mut(*level) {
                l.retain(|f| f.id != *id);
            }
        }
        for (level, meta) in &edit.added {
            if levels.len() <= *level {
                levels.resize(*level + 1, Vec::new());
            }
            levels[*level].push(Arc::new(meta.clone()));
        }
        for (i, l) in levels.iter_mut().enumerate() {
            if i == 0 {
                l.sort_by(|a, b| b.max_seq.cmp(&a.max_seq).then(b.id.cmp(&a.id)));
            } else {
                l.sort_by(|a, b| a.smallest.cmp(&b.smallest));
            }
        }
        Version { levels }
    }

    /// Total bytes in `level`.
    pub fn level_bytes(&self, level: usize) -> u64 {
        self.levels
            .get(level)
            .map_or(0, |l| l.iter().map(|f| f.size).sum())
    }

    /// Every live file with its level.
    pub fn files(&self) -> impl Iterator<Item = (usize, &Arc<FileMeta>)> {
        self.levels
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.iter().map(move |f| (i, f)))
    }
}

/// One atomic change of the manifest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Edit {
    /// Files added, with their level.
    pub added: Vec<(usize, FileMeta)>,
    /// Files removed: (level, id).
    pub deleted: Vec<(usize, u64)>,
    /// WAL files with a smaller id are no longer needed.
    pub log_number: Option<u64>,
    /// Next unused file number.
    pub next_file: Option<u64>,
    /// Largest sequence number persisted in SSTables.
    pub last_seq: Option<u64>,
}

const TAG_LOG: u8 = 1;
const TAG_NEXT_FILE: u8 = 2;
const TAG_LAST_SEQ: u8 = 3;
const TAG_ADD: u8 = 4;
const TAG_DELETE: u8 = 5;

impl Edit {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (tag, v) in [
            (TAG_LOG, self.log_number),
            (TAG_NEXT_FILE, self.next_file),
            (TAG_LAST_SEQ, self.last_seq),
        ] {
            if let Some(v) = v {
                out.push(tag);
                codec::put_u64(&mut out, v);
            }
        }
        for (level, m) in &self.added {
            out.push(TAG_ADD);
            codec::put_u32(&mut out, *level as u32);
            for v in [m.id, m.size, m.min_seq, m.max_seq, m.entries] {
                codec::put_u64(&mut out, v);
            }
            codec::put_bytes(&mut out, &m.smallest);
            codec::put_bytes(&mut out, &m.largest);
        }
        for (level, id) in &self.deleted {
            out.push(TAG_DELETE);
            codec::put_u32(&mut out, *level as u32);
            codec::put_u64(&mut out, *id);
        }
        out
    }

    pub(crate) fn decode(payload: &[u8]) -> Option<Edit> {
        let mut c = Cursor::new(payload);
        let mut e = Edit::default();
        while !c.is_empty() {
            match c.u8()? {
                TAG_LOG => e.log_number = Some(c.u64()?),
                TAG_NEXT_FILE => e.next_file = Some(c.u64()?),
                TAG_LAST_SEQ => e.last_seq = Some(c.u64()?),
                TAG_ADD => {
                    let level = c.u32()? as usize;
                    let (id, size, min_seq, max_seq, entries) =
                        (c.u64()?, c.u64()?, c.u64()?, c.u64()?, c.u64()?);
                    let smallest = c.len_prefixed()?.to_vec();
                    let largest = c.len_prefixed()?.to_vec();
                    if level > 64 {
                        return None;
                    }
                    e.added.push((
                        level,
                        FileMeta {
                            id,
                            size,
                            smallest,
                            largest,
                            min_seq,
                            max_seq,
                            entries,
                        },
                    ));
                }
                TAG_DELETE => {
                    let level = c.u32()? as usize;
                    e.deleted.push((level, c.u64()?));
                }
                _ => return None,
            }
        }
        Some(e)
    }
}

/// The state recorded in the manifest.
#[derive(Clone, Debug)]
pub(crate) struct ManifestState {
    pub version: Version,
    pub log_number: u64,
    pub next_file: u64,
    pub last_seq: u64,
}

impl ManifestState {
    pub fn apply(&mut self, edit: &Edit) {
        self.version = self.version.apply(edit);
        if let Some(v) = edit.log_number {
            self.log_number = self.log_number.max(v);
        }
        if let Some(v) = edit.next_file {
            self.next_file = self.next_file.max(v);
        }
        if let Some(v) = edit.last_seq {
            self.last_seq = self.last_seq.max(v);
        }
    }

    fn snapshot_edit(&self) -> Edit {
        Edit {
            added: self
                .version
                .files()
                .map(|(l, f)| (l, (**f).clone()))
                .collect(),
            deleted: Vec::new(),
            log_number: Some(self.log_number),
            next_file: Some(self.next_file),
            last_seq: Some(self.last_seq),
        }
    }
}

pub(crate) fn manifest_path(dir: &Path) -> PathBuf {
    dir.join("MANIFEST")
}

/// Reads the manifest of `dir`, if it has one.
pub(crate) fn load(dir: &Path, levels: usize) -> Result<Option<ManifestState>> {
    let path = manifest_path(dir);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let contents = codec::read_log(&path, &data, 0)?;
    if let Some(at) = contents.torn_tail_at {
        tracing::warn!(path = %path.display(), offset = at, "ignoring torn tail of manifest (an edit interrupted by a crash)");
    }
    let mut state = ManifestState {
        version: Version::empty(levels),
        log_number: 0,
        next_file: 1,
        last_seq: 0,
    };
    for (offset, payload) in contents.records {
        let edit = Edit::decode(payload).ok_or_else(|| Error::Corruption {
            path: path.clone(),
            offset,
            detail: "manifest edit passed its checksum but does not decode".into(),
        })?;
        state.apply(&edit);
    }
    Ok(Some(state))
}

/// The open manifest log.
pub(crate) struct Manifest {
    file: File,
    path: PathBuf,
    dir: PathBuf,
    /// The state the log describes, kept to write a fresh snapshot.
    state: ManifestState,
    edits_since_snapshot: usize,
}

/// Edits appended before the log is replaced by a snapshot, bounding its size and the
/// replay time at open.
const EDITS_PER_SNAPSHOT: usize = 1000;

impl Manifest {
    /// Atomically replaces the manifest of `dir` by a snapshot of `state`.
    pub fn create(dir: &Path, state: &ManifestState) -> Result<Manifest> {
        let path = manifest_path(dir);
        let tmp = dir.join("MANIFEST.tmp");
        let mut buf = Vec::new();
        codec::frame_record(&mut buf, &state.snapshot_edit().encode());
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(&buf)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        sync_dir(dir)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Manifest {
            file,
            path,
            dir: dir.to_path_buf(),
            state: state.clone(),
            edits_since_snapshot: 0,
        })
    }

    /// Appends `edit` and fsyncs it. Only after this returns may the edit take effect.
    /// Every [`EDITS_PER_SNAPSHOT`] edits the log is atomically replaced by a snapshot.
    pub fn append(&mut self, edit: &Edit) -> Result<()> {
        let mut buf = Vec::new();
        codec::frame_record(&mut buf, &edit.encode());
        self.file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))?;
        self.state.apply(edit);
        self.edits_since_snapshot += 1;
        if self.edits_since_snapshot >= EDITS_PER_SNAPSHOT {
            *self = Manifest::create(&self.dir.clone(), &self.state)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: u64, a: &str, b: &str) -> FileMeta {
        FileMeta {
            id,
            size: 100,
            smallest: a.into(),
            largest: b.into(),
            min_seq: id,
            max_seq: id * 10,
            entries: 3,
        }
    }

    #[test]
    fn edits_round_trip_through_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = ManifestState {
            version: Version::empty(3),
            log_number: 1,
            next_file: 2,
            last_seq: 0,
        };
        let mut m = Manifest::create(dir.path(), &st).unwrap();
        let e1 = Edit {
            added: vec![(0, meta(5, "a", "c")), (1, meta(6, "d", "f"))],
            next_file: Some(7),
            ..Edit::default()
        };
        let e2 = Edit {
            deleted: vec![(0, 5)],
            added: vec![(1, meta(8, "a", "c"))],
            log_number: Some(4),
            last_seq: Some(99),
            ..Edit::default()
        };
        for e in [&e1, &e2] {
            assert_eq!(Edit::decode(&e.encode()).as_ref(), Some(e));
            m.append(e).unwrap();
            st.apply(e);
        }
        let loaded = load(dir.path(), 3).unwrap().unwrap();
        assert_eq!(loaded.log_number, 4);
        assert_eq!(loaded.last_seq, 99);
        assert_eq!(loaded.next_file, 7);
        let ids: Vec<_> = loaded.version.levels[1].iter().map(|f| f.id).collect();
        assert_eq!(ids, vec![8, 6]);
        assert!(loaded.version.levels[0].is_empty());
    }

    #[test]
    fn the_log_is_replaced_by_a_snapshot_as_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let st = ManifestState {
            version: Version::empty(2),
            log_number: 1,
            next_file: 2,
            last_seq: 0,
        };
        let mut m = Manifest::create(dir.path(), &st).unwrap();
        for i in 0..(EDITS_PER_SNAPSHOT as u64 + 10) {
            let add = Edit {
                added: vec![(1, meta(100 + i, "a", "b"))],
                ..Edit::default()
            };
            m.append(&add).unwrap();
            m.append(&Edit {
                deleted: vec![(1, 100 + i)],
                last_seq: Some(i),
                ..Edit::default()
            })
            .unwrap();
        }
        let size = std::fs::metadata(manifest_path(dir.path())).unwrap().len();
        assert!(size < 50 * 1024, "manifest kept {size} bytes");
        let loaded = load(dir.path(), 2).unwrap().unwrap();
        assert_eq!(loaded.last_seq, EDITS_PER_SNAPSHOT as u64 + 9);
        assert!(loaded.version.levels[1].is_empty());
    }
}
