//! The bounds-checked byte cursor shared by every binary reader.
//! Each read either returns the bytes or a `Truncated` error naming the file and the offset.

use std::path::Path;

use super::error::EventError;

/// A read position in a byte slice. `base` is the slice's offset inside the file, so that errors
/// report file offsets even when the slice is a sub-range (an AEDAT 4 payload reports its packet).
#[derive(Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    base: u64,
    file: &'a Path,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], file: &'a Path) -> Self {
        Self {
            buf,
            pos: 0,
            base: 0,
            file,
        }
    }

    pub(crate) fn with_base(buf: &'a [u8], file: &'a Path, base: u64) -> Self {
        Self {
            buf,
            pos: 0,
            base,
            file,
        }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// File offset of the current position.
    pub(crate) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    pub(crate) fn truncated(&self, needed: usize, what: &'static str) -> EventError {
        EventError::Truncated {
            file: self.file.to_path_buf(),
            offset: self.offset(),
            needed: needed as u64,
            available: self.remaining() as u64,
            what,
        }
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], EventError> {
        if n > self.remaining() {
            return Err(self.truncated(n, what));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], EventError> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, EventError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16_le(&mut self, what: &'static str) -> Result<u16, EventError> {
        self.array(what).map(u16::from_le_bytes)
    }

    pub(crate) fn u32_le(&mut self, what: &'static str) -> Result<u32, EventError> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(crate) fn i32_le(&mut self, what: &'static str) -> Result<i32, EventError> {
        self.array(what).map(i32::from_le_bytes)
    }

    /// Consumes one text line (without its `\n` or `\r\n`). A line without a terminator is a
    /// truncated header: every header format here ends its lines.
    pub(crate) fn line(&mut self, what: &'static str) -> Result<&'a [u8], EventError> {
        let rest = self.rest();
        match rest.iter().position(|&b| b == b'\n') {
            Some(end) => {
                self.pos += end + 1;
                let line = &rest[..end];
                Ok(line.strip_suffix(b"\r").unwrap_or(line))
            }
            None => Err(self.truncated(rest.len() + 1, what)),
        }
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }
}

/// Little-endian field reads inside an already bounds-checked record.
pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn le_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_le_bytes(a)
}
