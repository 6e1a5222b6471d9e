//! The Raft log as an append-only write-ahead log: segment files of records written with one
//! `pwrite` and made durable with one `fdatasync` per append.
//!
//! Every acknowledged write waits for two log flushes one after the other (the leader's, then a
//! follower's: openraft 0.9 replicates only after the leader's own append is durable), so the
//! cost of one flush is paid twice per write. A redb commit of one log entry wrote seven pages
//! across the file and its header before its `fdatasync`; a record appended into a segment
//! whose space was reserved up front is one write to one place, and the flush has no file-size
//! change to carry (decision 0006 has the measurements).
//!
//! A record is `[payload length: u32][crc32 of index and payload: u32][index: u64][payload]`,
//! little endian. Segments are named by the index of their first record. Reading a segment
//! stops at the first record that is short, zero, fails its checksum or does not follow the
//! one before: that is where a crash cut the last append off, and everything after it is
//! cleared before the log is written again, so a stale record beyond the end can never be read
//! back as if it followed.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// Room reserved for each segment when it is created; a record larger than this gets a
/// segment of its own, which grows to fit it.
pub const SEGMENT_BYTES: u64 = 64 << 20;
const RECORD_HEADER: usize = 16;
const SUFFIX: &str = ".wal";

/// Where one record's payload lies.
#[derive(Clone, Debug)]
struct Span {
    segment: Arc<Segment>,
    offset: u64,
    len: u32,
}

#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    file: File,
}

/// The records held, in index order, with no gaps.
#[derive(Debug, Default)]
struct Index {
    first: u64,
    spans: VecDeque<Span>,
}

impl Index {
    fn next(&self) -> u64 {
        self.first + self.spans.len() as u64
    }

    fn position(&self, index: u64) -> Option<usize> {
        let at = usize::try_from(index.checked_sub(self.first)?).ok()?;
        (at < self.spans.len()).then_some(at)
    }
}

/// Every segment on disk and where in the last one the next record goes.
#[derive(Debug)]
struct Writer {
    /// Oldest first; records are appended to the last.
    segments: VecDeque<Arc<Segment>>,
    position: u64,
    /// The log was purged empty: the next record, which may not follow the last one written,
    /// starts a segment of its own (segments are read back as one unbroken sequence each).
    fresh_segment: bool,
}

/// An append-only log of `(index, payload)` records with consecutive indexes.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    /// Held across a whole append, truncation or purge: one writer at a time.
    writer: Mutex<Writer>,
    /// Readers take it only to copy spans, never across disk I/O.
    index: RwLock<Index>,
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Opens the log in `dir` (created if missing), reading back every record after `purged`
    /// (how far the caller last purged it) up to the first one a crash left incomplete.
    pub fn open(dir: &Path, purged: Option<u64>) -> io::Result<Wal> {
        Wal::open_with(dir, purged, SEGMENT_BYTES)
    }

    fn open_with(dir: &Path, purged: Option<u64>, segment_bytes: u64) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let mut names: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let first = path.file_name()?.to_str()?.strip_suffix(SUFFIX)?.parse().ok()?;
                Some((first, path))
            })
            .collect();
        names.sort();
        // The log starts in the last segment that begins at or before the first record kept;
        // the ones before it hold purged records only.
        if let Some(purged) = purged {
            let start = names.iter().rposition(|(first, _)| *first <= purged + 1).unwrap_or(0);
            for (_, path) in names.drain(..start) {
                std::fs::remove_file(path)?;
            }
        }
        let mut index = Index::default();
        let mut segments = VecDeque::new();
        let mut end = 0;
        let mut names = names.into_iter();
        for (first, path) in names.by_ref() {
            if !index.spans.is_empty() && first != index.next() {
                // Not the segment that follows: the log ended in the one before.
                std::fs::remove_file(&path)?;
                continue;
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let segment = Arc::new(Segment { first, path, file });
            let (read_to, complete) = read_segment(&segment, &mut index)?;
            segments.push_back(segment);
            end = read_to;
            if !complete {
                break;
            }
        }
        // Segments after a cut-off record hold nothing that follows it.
        for (_, path) in names {
            std::fs::remove_file(path)?;
        }
        let wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            writer: Mutex::new(Writer { segments, position: end, fresh_segment: false }),
            index: RwLock::new(index),
        };
        {
            let writer = wal.writer.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(segment) = writer.segments.back() {
                clear_from(&segment.file, end, segment_bytes)?;
            }
        }
        sync_dir(dir)?;
        if let Some(purged) = purged {
            wal.purge(purged)?;
        }
        Ok(wal)
    }

    /// The index the next record must have, or `None` while the log is empty.
    pub fn next_index(&self) -> Option<u64> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        (!index.spans.is_empty()).then(|| index.next())
    }

    /// Appends `records` (consecutive indexes, following the last record held) and makes them
    /// durable before returning.
    pub fn append(&self, records: &[(u64, Vec<u8>)]) -> io::Result<()> {
        let Some(((first, _), _)) = records.split_first() else { return Ok(()) };
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(next) = self.next_index()
            && *first != next
        {
            return Err(invalid(format!("log record {first} appended where {next} comes next")));
        }
        let mut bytes = Vec::with_capacity(records.iter().map(|(_, p)| RECORD_HEADER + p.len()).sum());
        let mut lens = Vec::with_capacity(records.len());
        for (k, (index, payload)) in records.iter().enumerate() {
            if *index != first + k as u64 {
                return Err(invalid(format!("log records not consecutive at {index}")));
            }
            let len =
                u32::try_from(payload.len()).map_err(|_| invalid(format!("log record {index} too large")))?;
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&checksum(*index, payload).to_le_bytes());
            bytes.extend_from_slice(&index.to_le_bytes());
            bytes.extend_from_slice(payload);
            lens.push(len);
        }
        let needs_new = match writer.segments.back() {
            None => true,
            Some(_) => {
                writer.fresh_segment
                    || (writer.position > 0 && writer.position + bytes.len() as u64 > self.segment_bytes)
            }
        };
        if needs_new {
            self.start_segment(&mut writer, *first)?;
        }
        let segment =
            writer.segments.back().cloned().ok_or_else(|| invalid("no segment to append to".into()))?;
        let start = writer.position;
        segment.file.write_all_at(&bytes, start)?;
        segment.file.sync_data()?;
        writer.position += bytes.len() as u64;
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        if index.spans.is_empty() {
            index.first = *first;
        }
        let mut offset = start;
        for len in lens {
            index.spans.push_back(Span {
                segment: segment.clone(),
                offset: offset + RECORD_HEADER as u64,
                len,
            });
            offset += RECORD_HEADER as u64 + u64::from(len);
        }
        Ok(())
    }

    fn start_segment(&self, writer: &mut Writer, first: u64) -> io::Result<()> {
        let path = self.dir.join(format!("{first:020}{SUFFIX}"));
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        // Reserved now, so that appends do not change the file's size.
        file.set_len(self.segment_bytes)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        let segment = Arc::new(Segment { first, path, file });
        writer.segments.push_back(segment);
        writer.position = 0;
        writer.fresh_segment = false;
        Ok(())
    }

    /// The payloads of the records in `range` that the log holds, in order.
    pub fn read(&self, range: impl RangeBounds<u64>) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let spans: Vec<(u64, Span)> = {
            let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
            let start = match range.start_bound() {
                Bound::Included(&s) => s,
                Bound::Excluded(&s) => s.saturating_add(1),
                Bound::Unbounded => index.first,
            }
            .max(index.first);
            let end = match range.end_bound() {
                Bound::Included(&e) => e.saturating_add(1),
                Bound::Excluded(&e) => e,
                Bound::Unbounded => index.next(),
            }
            .min(index.next());
            (start..end).filter_map(|i| Some((i, index.spans[index.position(i)?].clone()))).collect()
        };
        spans
            .into_iter()
            .map(|(i, span)| {
                let mut payload = vec![0u8; span.len as usize];
                span.segment.file.read_exact_at(&mut payload, span.offset)?;
                Ok((i, payload))
            })
            .collect()
    }

    /// Removes the records from `index` on, durably: they can never be read back.
    pub fn truncate(&self, from: u64) -> io::Result<()> {
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let span = {
            let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
            match index.position(from) {
                Some(at) => index.spans[at].clone(),
                None => return Ok(()),
            }
        };
        while writer.segments.back().is_some_and(|s| s.first > span.segment.first) {
            if let Some(later) = writer.segments.pop_back() {
                std::fs::remove_file(&later.path)?;
            }
        }
        let record_start = span.offset - RECORD_HEADER as u64;
        clear_from(&span.segment.file, record_start, self.segment_bytes)?;
        sync_dir(&self.dir)?;
        writer.position = record_start;
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        let keep = index.position(from).unwrap_or(index.spans.len());
        index.spans.truncate(keep);
        Ok(())
    }

    /// Forgets the records up to and including `upto` and deletes the segments that held only
    /// those. The caller records how far the log was purged before calling this.
    pub fn purge(&self, upto: u64) -> io::Result<()> {
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        {
            let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
            while index.first <= upto && !index.spans.is_empty() {
                index.spans.pop_front();
                index.first += 1;
            }
            if index.spans.is_empty() {
                index.first = upto.saturating_add(1).max(index.first);
                writer.fresh_segment = true;
            }
        }
        // A segment can go once the next one starts at or before the first record kept.
        let mut removed = false;
        while writer.segments.len() > 1 && writer.segments[1].first <= upto + 1 {
            if let Some(old) = writer.segments.pop_front() {
                std::fs::remove_file(&old.path)?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Reads `segment`'s records into `index`; returns where they end and whether the segment was
/// closed cleanly (its records reach its end or a zeroed rest) rather than cut off.
fn read_segment(segment: &Arc<Segment>, index: &mut Index) -> io::Result<(u64, bool)> {
    let size = segment.file.metadata()?.len();
    let mut position = 0u64;
    let mut header = [0u8; RECORD_HEADER];
    while position + RECORD_HEADER as u64 <= size {
        segment.file.read_exact_at(&mut header, position)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let record_index = u64::from_le_bytes([
            header[8], header[9], header[10], header[11], header[12], header[13], header[14], header[15],
        ]);
        if header == [0u8; RECORD_HEADER] {
            return Ok((position, true));
        }
        let payload_at = position + RECORD_HEADER as u64;
        let expected = if index.spans.is_empty() { segment.first } else { index.next() };
        if len == 0 || payload_at + u64::from(len) > size || record_index != expected {
            return Ok((position, false));
        }
        let mut payload = vec![0u8; len as usize];
        segment.file.read_exact_at(&mut payload, payload_at)?;
        if checksum(record_index, &payload) != crc {
            return Ok((position, false));
        }
        if index.spans.is_empty() {
            index.first = record_index;
        }
        index.spans.push_back(Span { segment: segment.clone(), offset: payload_at, len });
        position = payload_at + u64::from(len);
    }
    Ok((position, true))
}

/// Zeroes `file` from `from` on (dropping those blocks and reserving them again), durably.
fn clear_from(file: &File, from: u64, reserve: u64) -> io::Result<()> {
    file.set_len(from)?;
    file.set_len(reserve.max(from))?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(range: std::ops::Range<u64>, tag: u8) -> Vec<(u64, Vec<u8>)> {
        range.map(|i| (i, vec![tag; 10 + usize::try_from(i % 7).unwrap() * 100])).collect()
    }

    fn all(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
        wal.read(..).unwrap()
    }

    #[test]
    fn records_read_back_in_ranges_and_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open_with(dir.path(), None, 4096).unwrap();
        assert_eq!(wal.next_index(), None);
        for k in (1..20).step_by(3) {
            wal.append(&records(k..(k + 3).min(20), 1)).unwrap();
        }
        wal.append(&records(20..40, 2)).unwrap();
        assert_eq!(wal.read(5..8).unwrap(), records(5..8, 1));
        assert_eq!(wal.read(18..=21).unwrap(), [records(18..20, 1), records(20..22, 2)].concat());
        assert_eq!(wal.read(39..100).unwrap(), records(39..40, 2));
        assert!(std::fs::read_dir(dir.path()).unwrap().count() > 2, "small segments rotated");
        drop(wal);
        let wal = Wal::open_with(dir.path(), None, 4096).unwrap();
        assert_eq!(all(&wal), [records(1..20, 1), records(20..40, 2)].concat());
        assert_eq!(wal.next_index(), Some(40));
        let err = wal.append(&records(41..42, 3)).unwrap_err();
        assert!(err.to_string().contains("41 appended where 40 comes next"), "{err}");
    }

    #[test]
    fn a_record_cut_off_by_a_crash_and_anything_after_it_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), None).unwrap();
        wal.append(&records(1..5, 1)).unwrap();
        let end = {
            let writer = wal.writer.lock().unwrap();
            writer.position
        };
        wal.append(&records(5..6, 1)).unwrap();
        drop(wal);
        // The last record only half on disk, as a crash in its write leaves it.
        let path = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0u8; 64], end + 40).unwrap();
        let wal = Wal::open(dir.path(), None).unwrap();
        assert_eq!(all(&wal), records(1..5, 1));
        wal.append(&records(5..7, 9)).unwrap();
        drop(wal);
        assert_eq!(all(&Wal::open(dir.path(), None).unwrap()), [records(1..5, 1), records(5..7, 9)].concat());
    }

    #[test]
    fn truncated_records_never_come_back_even_where_new_ones_fit_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open_with(dir.path(), None, 4096).unwrap();
        wal.append(&records(1..30, 1)).unwrap();
        wal.truncate(10).unwrap();
        assert_eq!(wal.next_index(), Some(10));
        // A new record 10 exactly as long as the old one: the old 11… lie right behind it.
        wal.append(&records(10..11, 2)).unwrap();
        drop(wal);
        let wal = Wal::open_with(dir.path(), None, 4096).unwrap();
        assert_eq!(all(&wal), [records(1..10, 1), records(10..11, 2)].concat());
        wal.truncate(1).unwrap();
        assert_eq!(wal.next_index(), None);
        drop(wal);
        assert_eq!(all(&Wal::open_with(dir.path(), None, 4096).unwrap()), vec![]);
    }

    #[test]
    fn purging_drops_old_segments_and_the_log_goes_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open_with(dir.path(), None, 2048).unwrap();
        for k in 0..10 {
            wal.append(&records(1 + k * 5..6 + k * 5, 1)).unwrap();
        }
        let segments = || std::fs::read_dir(dir.path()).unwrap().count();
        let before = segments();
        wal.purge(30).unwrap();
        assert!(segments() < before, "segments holding only purged records are deleted");
        assert_eq!(wal.read(..).unwrap(), records(31..51, 1));
        wal.purge(50).unwrap();
        assert_eq!(wal.next_index(), None);
        wal.append(&records(51..53, 2)).unwrap();
        drop(wal);
        let wal = Wal::open_with(dir.path(), Some(50), 2048).unwrap();
        assert_eq!(all(&wal), records(51..53, 2));
        // A snapshot installed far ahead: the log purged past its end goes on from there.
        wal.purge(1000).unwrap();
        wal.append(&records(1001..1003, 3)).unwrap();
        drop(wal);
        let wal = Wal::open_with(dir.path(), Some(1000), 2048).unwrap();
        assert_eq!(all(&wal), records(1001..1003, 3));
        assert_eq!(wal.next_index(), Some(1003));
    }
}
