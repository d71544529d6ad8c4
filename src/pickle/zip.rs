//! Reads the directory of a `torch.save` zip archive: entry names, where each
//! stored entry's bytes start and how many there are, every figure checked
//! against the file's length.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{escape, Error, Result};

/// Most entries an archive may list (a state dict has one per storage).
const MAX_ENTRIES: u64 = 1 << 20;
/// Largest central directory read, in bytes.
const MAX_CENTRAL_DIR: u64 = 256 << 20;
/// End-of-central-directory record: fixed part, and the longest comment after it.
const EOCD_LEN: u64 = 22;
const MAX_COMMENT: u64 = 0xFFFF;

const SIG_LOCAL: u32 = 0x0403_4b50;
const SIG_CENTRAL: u32 = 0x0201_4b50;
const SIG_EOCD: u32 = 0x0605_4b50;
const SIG_EOCD64: u32 = 0x0606_4b50;
const SIG_LOCATOR64: u32 = 0x0706_4b50;

/// Where one stored entry's bytes lie in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Offset of the first data byte (after the local header).
    pub start: u64,
    /// Length of the data in bytes.
    pub len: u64,
}

/// The entries of an archive, by full name.
#[derive(Debug)]
pub struct Archive {
    /// Every entry, by name.
    pub entries: BTreeMap<String, Entry>,
}

/// Little-endian reads from a byte slice, each checked.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_le_bytes(b.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::checkpoint(path, format!("not a valid zip archive: {reason}"))
}

fn read_at(file: &File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    let n = usize::try_from(len).map_err(|_| bad(path, "a record is too large"))?;
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| Error::io(path, "read", e))?;
    Ok(buf)
}

/// The central directory's position, length and entry count.
struct Directory {
    offset: u64,
    size: u64,
    count: u64,
}

/// Finds the end-of-central-directory record (and its Zip64 form when a field
/// overflows) in the last bytes of the file.
fn find_directory(file: &File, path: &Path, file_len: u64) -> Result<Directory> {
    if file_len < EOCD_LEN {
        return Err(bad(path, "the file is too short (truncated?)"));
    }
    let tail_len = file_len.min(EOCD_LEN + MAX_COMMENT);
    let tail_start = file_len - tail_len;
    let tail = read_at(file, path, tail_start, tail_len)?;
    let sig = SIG_EOCD.to_le_bytes();
    let at = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail.get(i..i + 4) == Some(&sig[..]))
        .ok_or_else(|| bad(path, "no end-of-central-directory record (truncated?)"))?;
    let rec = tail.get(at..).unwrap_or_default();
    let mut c = Cursor::new(rec);
    let short = || bad(path, "end-of-central-directory record cut short");
    c.take(4).ok_or_else(short)?;
    let disk = c.u16().ok_or_else(short)?;
    let cd_disk = c.u16().ok_or_else(short)?;
    let _here = c.u16().ok_or_else(short)?;
    let count = c.u16().ok_or_else(short)?;
    let size = c.u32().ok_or_else(short)?;
    let offset = c.u32().ok_or_else(short)?;
    if disk != 0 || cd_disk != 0 {
        return Err(bad(path, "multi-disk archives are not supported"));
    }
    let eocd_pos = tail_start + at as u64;
    if count == 0xFFFF || size == 0xFFFF_FFFF || offset == 0xFFFF_FFFF {
        return find_directory64(file, path, eocd_pos);
    }
    Ok(Directory {
        offset: u64::from(offset),
        size: u64::from(size),
        count: u64::from(count),
    })
}

/// Reads the Zip64 locator just before the end record, then the Zip64 end record.
fn find_directory64(file: &File, path: &Path, eocd_pos: u64) -> Result<Directory> {
    let loc_pos = eocd_pos
        .checked_sub(20)
        .ok_or_else(|| bad(path, "Zip64 fields without a Zip64 locator"))?;
    let loc = read_at(file, path, loc_pos, 20)?;
    let mut c = Cursor::new(&loc);
    let short = || bad(path, "Zip64 record cut short");
    if c.u32() != Some(SIG_LOCATOR64) {
        return Err(bad(path, "Zip64 fields without a Zip64 locator"));
    }
    c.u32().ok_or_else(short)?;
    let rec_pos = c.u64().ok_or_else(short)?;
    if rec_pos.checked_add(56).is_none_or(|end| end > loc_pos) {
        return Err(bad(path, "Zip64 end record offset out of range"));
    }
    let rec = read_at(file, path, rec_pos, 56)?;
    let mut c = Cursor::new(&rec);
    if c.u32() != Some(SIG_EOCD64) {
        return Err(bad(path, "no Zip64 end-of-central-directory record"));
    }
    c.take(12).ok_or_else(short)?;
    let disk = c.u32().ok_or_else(short)?;
    let cd_disk = c.u32().ok_or_else(short)?;
    c.u64().ok_or_else(short)?;
    let count = c.u64().ok_or_else(short)?;
    let size = c.u64().ok_or_else(short)?;
    let offset = c.u64().ok_or_else(short)?;
    if disk != 0 || cd_disk != 0 {
        return Err(bad(path, "multi-disk archives are not supported"));
    }
    Ok(Directory {
        offset,
        size,
        count,
    })
}

/// One central-directory record, before its local header is read.
struct Record {
    name: String,
    method: u16,
    flags: u16,
    csize: u64,
    usize: u64,
    local: u64,
}

/// Parses one central-directory record, Zip64 extra field included.
fn parse_record(c: &mut Cursor<'_>, path: &Path) -> Result<Record> {
    let short = || bad(path, "central directory cut short (truncated?)");
    if c.u32().ok_or_else(short)? != SIG_CENTRAL {
        return Err(bad(path, "bad central directory record signature"));
    }
    c.take(4).ok_or_else(short)?;
    let flags = c.u16().ok_or_else(short)?;
    let method = c.u16().ok_or_else(short)?;
    c.take(8).ok_or_else(short)?;
    let mut csize = u64::from(c.u32().ok_or_else(short)?);
    let mut usize = u64::from(c.u32().ok_or_else(short)?);
    let name_len = usize::from(c.u16().ok_or_else(short)?);
    let extra_len = usize::from(c.u16().ok_or_else(short)?);
    let comment_len = usize::from(c.u16().ok_or_else(short)?);
    c.take(8).ok_or_else(short)?;
    let mut local = u64::from(c.u32().ok_or_else(short)?);
    let name = c.take(name_len).ok_or_else(short)?;
    let name =
        String::from_utf8(name.to_vec()).map_err(|_| bad(path, "an entry name is not UTF-8"))?;
    let extra = c.take(extra_len).ok_or_else(short)?;
    c.take(comment_len).ok_or_else(short)?;
    // Zip64 extra field (id 1): the overflowing fields, in this order.
    let mut e = Cursor::new(extra);
    while let (Some(id), Some(len)) = (e.u16(), e.u16()) {
        let body = e.take(usize::from(len)).ok_or_else(short)?;
        if id != 1 {
            continue;
        }
        let mut z = Cursor::new(body);
        let msg = || {
            bad(
                path,
                format!("entry {}: Zip64 field cut short", escape(&name)),
            )
        };
        if usize == 0xFFFF_FFFF {
            usize = z.u64().ok_or_else(msg)?;
        }
        if csize == 0xFFFF_FFFF {
            csize = z.u64().ok_or_else(msg)?;
        }
        if local == 0xFFFF_FFFF {
            local = z.u64().ok_or_else(msg)?;
        }
    }
    Ok(Record {
        name,
        method,
        flags,
        csize,
        usize,
        local,
    })
}

/// Reads the directory of the zip archive at `path`: every entry's data range, each
/// checked against the file's length. Compressed or encrypted entries are refused.
pub fn read_archive(file: &File, path: &Path) -> Result<Archive> {
    let file_len = file
        .metadata()
        .map_err(|e| Error::io(path, "stat", e))?
        .len();
    let dir = find_directory(file, path, file_len)?;
    if dir.count > MAX_ENTRIES {
        return Err(bad(
            path,
            format!("{} entries (limit {MAX_ENTRIES})", dir.count),
        ));
    }
    if dir.size > MAX_CENTRAL_DIR {
        return Err(bad(path, "central directory too large"));
    }
    if dir
        .offset
        .checked_add(dir.size)
        .is_none_or(|end| end > file_len)
    {
        return Err(bad(
            path,
            "central directory lies past the end of the file (truncated?)",
        ));
    }
    let cd = read_at(file, path, dir.offset, dir.size)?;
    let mut c = Cursor::new(&cd);
    let mut entries = BTreeMap::new();
    for _ in 0..dir.count {
        let r = parse_record(&mut c, path)?;
        let name = escape(&r.name).into_owned();
        if r.flags & 1 != 0 {
            return Err(bad(path, format!("entry {name} is encrypted")));
        }
        if r.method != 0 {
            return Err(Error::checkpoint(
                path,
                format!(
                    "entry {name} is compressed (method {}); torch.save stores entries \
                     uncompressed, and compressed entries are refused",
                    r.method
                ),
            ));
        }
        if r.csize != r.usize {
            return Err(bad(path, format!("entry {name}: stored sizes disagree")));
        }
        let start = data_start(file, path, file_len, &r)?;
        if start.checked_add(r.usize).is_none_or(|end| end > file_len) {
            return Err(bad(
                path,
                format!("entry {name} runs past the end of the file (truncated?)"),
            ));
        }
        if entries
            .insert(
                r.name,
                Entry {
                    start,
                    len: r.usize,
                },
            )
            .is_some()
        {
            return Err(bad(path, format!("entry {name} appears twice")));
        }
    }
    Ok(Archive { entries })
}

/// Reads an entry's local header to find where its data starts.
fn data_start(file: &File, path: &Path, file_len: u64, r: &Record) -> Result<u64> {
    let name = escape(&r.name);
    if r.local.checked_add(30).is_none_or(|end| end > file_len) {
        return Err(bad(
            path,
            format!("entry {name}: local header past the end of the file"),
        ));
    }
    let h = read_at(file, path, r.local, 30)?;
    let mut c = Cursor::new(&h);
    let short = || bad(path, format!("entry {name}: local header cut short"));
    if c.u32() != Some(SIG_LOCAL) {
        return Err(bad(
            path,
            format!("entry {name}: bad local header signature"),
        ));
    }
    c.take(22).ok_or_else(short)?;
    let name_len = u64::from(c.u16().ok_or_else(short)?);
    let extra_len = u64::from(c.u16().ok_or_else(short)?);
    r.local
        .checked_add(30 + name_len + extra_len)
        .ok_or_else(|| bad(path, format!("entry {name}: offset overflows")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_stops_at_the_end() {
        let mut c = Cursor::new(&[1, 2, 3]);
        assert_eq!(c.u16(), Some(0x0201));
        assert_eq!(c.u16(), None);
        assert_eq!(c.take(usize::MAX), None);
    }
}
