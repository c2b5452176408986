//! Segment files: the on-disk framing of the journal.
//!
//! A journal directory holds numbered segments, `00000000000000000001.log` and up. A
//! segment starts with an 8-byte magic and holds frames: `len: u32 LE`, `crc: u32 LE`
//! (CRC-32 of the payload), then `len` bytes of payload. A frame whose length runs past
//! the end of the file is torn (a crash mid-write); one whose checksum does not match is
//! corrupt. Reading stops at the first bad frame and says where and why, so every complete
//! record before the damage is kept.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The first bytes of every segment.
pub const MAGIC: &[u8; 8] = b"NBJRNL01";
/// Frame header: length and checksum.
pub const HEADER: usize = 8;
/// No record is larger than this; a larger length is damage, not a record.
pub const MAX_RECORD: usize = 64 << 20;

/// Where a record starts: segment number and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "segment {} offset {}", self.segment, self.offset)
    }
}

/// Why reading a segment stopped before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub at: Position,
    /// Bytes from the damage to the end of the segment: what cannot be read.
    pub bytes: u64,
    pub reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} ({} bytes unreadable)",
            self.at, self.reason, self.bytes
        )
    }
}

pub fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.log"))
}

/// The segment numbers in `dir`, ascending.
pub fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_suffix(".log")
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The sequence number a writer put in front of a payload, and the rest.
pub fn split_seq(payload: &[u8]) -> Option<(u64, &[u8])> {
    let (seq, rest) = payload.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*seq), rest))
}

/// Appends one frame holding `payload` to `buf`.
pub fn frame(buf: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("records are far below 4 GiB");
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// The payloads of the frames [`frame`] put in `buf`, in order, as far as they are whole
/// and their checksums hold; `None` in place of the rest if one is not.
pub fn frames(buf: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let parsed = (|| {
            let (len, after) = rest.split_first_chunk::<4>()?;
            let (crc, after) = after.split_first_chunk::<4>()?;
            let len = u32::from_le_bytes(*len) as usize;
            let payload = after.get(..len)?;
            (crc32fast::hash(payload) == u32::from_le_bytes(*crc))
                .then_some((payload, &after[len..]))
        })();
        match parsed {
            Some((payload, after)) => {
                rest = after;
                Some(Some(payload))
            }
            None => {
                rest = &[];
                Some(None)
            }
        }
    })
}

/// Reads the frames of one segment in order.
#[derive(Debug)]
pub struct SegmentReader {
    reader: BufReader<File>,
    segment: u64,
    offset: u64,
    len: u64,
    damage: Option<Damage>,
}

impl SegmentReader {
    pub fn open(dir: &Path, segment: u64) -> io::Result<SegmentReader> {
        Self::open_file(&segment_path(dir, segment), MAGIC, segment)
    }

    /// Reads any file of frames that starts with `magic` (snapshots use this too);
    /// `segment` only labels positions.
    pub fn open_file(path: &Path, magic: &[u8; 8], segment: u64) -> io::Result<SegmentReader> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut found = [0u8; 8];
        let header = if len < MAGIC.len() as u64 {
            Err("missing file header")
        } else {
            file.read_exact(&mut found)?;
            if &found == magic {
                Ok(())
            } else {
                Err("wrong file header")
            }
        };
        let mut out = SegmentReader {
            reader: BufReader::with_capacity(1 << 20, file),
            segment,
            offset: MAGIC.len() as u64,
            len,
            damage: None,
        };
        if let Err(reason) = header {
            out.offset = 0;
            out.damage = Some(out.damage_here(reason.into()));
        }
        Ok(out)
    }

    /// Starts reading at `offset` (a frame boundary from an earlier read).
    pub fn seek(&mut self, offset: u64) -> io::Result<()> {
        if self.damage.is_none() && offset > self.offset {
            self.reader.seek(SeekFrom::Start(offset))?;
            self.offset = offset;
        }
        Ok(())
    }

    fn damage_here(&self, reason: String) -> Damage {
        Damage {
            at: Position {
                segment: self.segment,
                offset: self.offset,
            },
            bytes: self.len.saturating_sub(self.offset),
            reason,
        }
    }

    /// The next record into `buf` and where it starts; `None` at the end or at damage
    /// (then [`SegmentReader::damage`] says what).
    pub fn next_into(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<Position>> {
        if self.damage.is_some() || self.offset >= self.len {
            return Ok(None);
        }
        let at = Position {
            segment: self.segment,
            offset: self.offset,
        };
        let left = self.len - self.offset;
        if left < HEADER as u64 {
            self.damage = Some(self.damage_here("torn frame header".into()));
            return Ok(None);
        }
        let mut header = [0u8; HEADER];
        self.reader.read_exact(&mut header)?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD {
            self.damage = Some(self.damage_here(format!("impossible record length {len}")));
            return Ok(None);
        }
        if (len + HEADER) as u64 > left {
            self.damage = Some(self.damage_here(format!(
                "torn record: {len} bytes announced, {} present",
                left - HEADER as u64
            )));
            return Ok(None);
        }
        buf.clear();
        buf.resize(len, 0);
        self.reader.read_exact(buf)?;
        if crc32fast::hash(buf) != crc {
            self.damage = Some(self.damage_here("checksum mismatch".into()));
            return Ok(None);
        }
        self.offset += (HEADER + len) as u64;
        Ok(Some(at))
    }

    /// Where reading stopped early, if it did.
    pub fn damage(&self) -> Option<&Damage> {
        self.damage.as_ref()
    }

    /// The offset after the last good frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// The segment being appended to.
#[derive(Debug)]
pub struct SegmentWriter {
    file: File,
    pub segment: u64,
    pub len: u64,
}

impl SegmentWriter {
    /// Creates a new, empty segment (its header made durable with the directory entry).
    pub fn create(dir: &Path, segment: u64) -> io::Result<SegmentWriter> {
        let path = segment_path(dir, segment);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(SegmentWriter {
            file,
            segment,
            len: MAGIC.len() as u64,
        })
    }

    /// Opens the last segment for appending after recovery cut it to `len` good bytes.
    pub fn reopen(dir: &Path, segment: u64, len: u64) -> io::Result<SegmentWriter> {
        let file = OpenOptions::new()
            .append(true)
            .open(segment_path(dir, segment))?;
        if file.metadata()?.len() != len {
            file.set_len(len)?;
            file.sync_all()?;
        }
        Ok(SegmentWriter { file, segment, len })
    }

    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    pub fn position(&self) -> Position {
        Position {
            segment: self.segment,
            offset: self.len,
        }
    }
}

/// Makes a directory's entries (a created or renamed file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync the dir.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut file = io::BufWriter::new(File::create(&tmp)?);
        write(&mut file)?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_in_a_buffer_read_back_until_one_is_torn_or_corrupt() {
        let mut buf = Vec::new();
        frame(&mut buf, b"first");
        frame(&mut buf, b"");
        frame(&mut buf, b"third");
        let all: Vec<_> = frames(&buf).collect();
        assert_eq!(
            all,
            [Some(&b"first"[..]), Some(&b""[..]), Some(&b"third"[..])]
        );
        // Cut inside the last frame: the whole ones, then `None`.
        let cut: Vec<_> = frames(&buf[..buf.len() - 2]).collect();
        assert_eq!(cut, [Some(&b"first"[..]), Some(&b""[..]), None]);
        // A flipped byte in the first payload: nothing trusted after it.
        let mut bad = buf.clone();
        bad[8] ^= 1;
        assert_eq!(frames(&bad).collect::<Vec<_>>(), [None]);
        assert_eq!(frames(&[]).count(), 0);
    }

    fn write_segment(dir: &Path, records: &[&[u8]]) -> u64 {
        let mut w = SegmentWriter::create(dir, 1).expect("create");
        let mut buf = Vec::new();
        for r in records {
            frame(&mut buf, r);
        }
        w.write(&buf).expect("write");
        w.sync().expect("sync");
        w.len
    }

    fn read_all(dir: &Path) -> (Vec<Vec<u8>>, Option<Damage>) {
        let mut r = SegmentReader::open(dir, 1).expect("open");
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while r.next_into(&mut buf).expect("read").is_some() {
            out.push(buf.clone());
        }
        (out, r.damage().cloned())
    }

    #[test]
    fn frames_round_trip() {
        let dir = tempdir();
        write_segment(dir.path(), &[b"one", b"two", &[7u8; 1000]]);
        let (records, damage) = read_all(dir.path());
        assert_eq!(records.len(), 3);
        assert_eq!(records[1], b"two");
        assert_eq!(damage, None);
    }

    #[test]
    fn a_torn_tail_keeps_every_complete_record() {
        let dir = tempdir();
        let len = write_segment(dir.path(), &[b"one", b"two", b"three"]);
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), 1))
            .expect("open");
        file.set_len(len - 2).expect("truncate");
        let (records, damage) = read_all(dir.path());
        assert_eq!(records, [b"one".to_vec(), b"two".to_vec()]);
        let damage = damage.expect("the torn record is reported");
        assert!(damage.reason.contains("torn"), "{damage}");
        assert_eq!(damage.bytes, (HEADER + 5 - 2) as u64);
    }

    #[test]
    fn a_flipped_bit_is_caught_by_the_checksum() {
        let dir = tempdir();
        write_segment(dir.path(), &[b"one", b"two", b"three"]);
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).expect("read");
        let second_payload = MAGIC.len() + HEADER + 3 + HEADER;
        bytes[second_payload] ^= 0x10;
        fs::write(&path, bytes).expect("write");
        let (records, damage) = read_all(dir.path());
        assert_eq!(records, [b"one".to_vec()]);
        assert_eq!(
            damage.expect("reported").reason,
            "checksum mismatch",
            "the record after the damage is not trusted either"
        );
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }
}
