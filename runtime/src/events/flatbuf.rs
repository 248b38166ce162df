//! A minimal, bounds-checked FlatBuffers table reader for the few AEDAT 4 tables we need.
//! Every access validates offsets against the buffer, so corrupt input yields `Corrupt`, never a panic.

use std::path::Path;

use super::cursor::{le_i64, le_u16, le_u32};
use super::error::EventError;

/// A FlatBuffers buffer plus where it came from, for error messages.
#[derive(Clone, Copy)]
pub(crate) struct Buf<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) file: &'a Path,
    /// File offset reported in errors (the packet header for AEDAT 4 payloads).
    pub(crate) offset: u64,
    pub(crate) what: &'static str,
}

/// A table: its position in the buffer and its vtable position.
#[derive(Clone, Copy)]
pub(crate) struct Table<'a> {
    buf: Buf<'a>,
    pos: usize,
    vtable: usize,
    vtable_len: usize,
}

impl<'a> Buf<'a> {
    pub(crate) fn err(&self, at: usize, msg: &str) -> EventError {
        EventError::corrupt(
            self.file,
            self.offset,
            format!("{} (flatbuffer offset {at}): {msg}", self.what),
        )
    }

    fn slice(&self, at: usize, len: usize, msg: &str) -> Result<&'a [u8], EventError> {
        at.checked_add(len)
            .and_then(|end| self.bytes.get(at..end))
            .ok_or_else(|| self.err(at, msg))
    }

    fn u32_at(&self, at: usize) -> Result<u32, EventError> {
        self.slice(at, 4, "offset past the end")
            .map(|b| le_u32(b, 0))
    }

    /// The 4-byte file identifier, at `prefix + 4` (after the root offset).
    pub(crate) fn identifier(&self, prefix: usize) -> Result<&'a [u8], EventError> {
        self.slice(prefix + 4, 4, "buffer too short for a file identifier")
    }

    /// The root table; `prefix` is 4 for size-prefixed buffers, else 0.
    pub(crate) fn root(&self, prefix: usize) -> Result<Table<'a>, EventError> {
        let rel = self.u32_at(prefix)? as usize;
        self.table(
            prefix
                .checked_add(rel)
                .ok_or_else(|| self.err(prefix, "root offset overflows"))?,
        )
    }

    fn table(&self, pos: usize) -> Result<Table<'a>, EventError> {
        let soffset = self.u32_at(pos)? as i32;
        let vtable = i64::try_from(pos)
            .ok()
            .and_then(|p| usize::try_from(p - i64::from(soffset)).ok())
            .ok_or_else(|| self.err(pos, "vtable offset points outside the buffer"))?;
        let head = self.slice(vtable, 4, "vtable past the end")?;
        let vtable_len = usize::from(le_u16(head, 0));
        if vtable_len < 4 || vtable_len % 2 != 0 {
            return Err(self.err(vtable, "bad vtable length"));
        }
        self.slice(vtable, vtable_len, "vtable past the end")?;
        Ok(Table {
            buf: *self,
            pos,
            vtable,
            vtable_len,
        })
    }
}

impl<'a> Table<'a> {
    /// Absolute position of field `index`, or `None` when the field is absent (default value).
    fn field(&self, index: usize) -> Option<usize> {
        let entry = 4 + 2 * index;
        if entry + 2 > self.vtable_len {
            return None;
        }
        match le_u16(self.buf.bytes, self.vtable + entry) {
            0 => None,
            off => Some(self.pos + usize::from(off)),
        }
    }

    pub(crate) fn i32_or(&self, index: usize, default: i32) -> Result<i32, EventError> {
        match self.field(index) {
            None => Ok(default),
            Some(at) => self.buf.u32_at(at).map(|v| v as i32),
        }
    }

    pub(crate) fn i64_or(&self, index: usize, default: i64) -> Result<i64, EventError> {
        match self.field(index) {
            None => Ok(default),
            Some(at) => self
                .buf
                .slice(at, 8, "scalar past the end")
                .map(|b| le_i64(b, 0)),
        }
    }

    /// Follows an offset field to its target position.
    fn target(&self, index: usize) -> Result<Option<usize>, EventError> {
        let Some(at) = self.field(index) else {
            return Ok(None);
        };
        let rel = self.buf.u32_at(at)? as usize;
        at.checked_add(rel)
            .map(Some)
            .ok_or_else(|| self.buf.err(at, "offset overflows"))
    }

    /// A vector of `elem_size`-byte inline elements: `(bytes, count)`; absent means empty.
    pub(crate) fn vector(
        &self,
        index: usize,
        elem_size: usize,
    ) -> Result<(&'a [u8], usize), EventError> {
        let Some(at) = self.target(index)? else {
            return Ok((&[], 0));
        };
        let count = self.buf.u32_at(at)? as usize;
        let len = count
            .checked_mul(elem_size)
            .ok_or_else(|| self.buf.err(at, "vector length overflows"))?;
        Ok((
            self.buf.slice(at + 4, len, "vector runs past the end")?,
            count,
        ))
    }

    pub(crate) fn string(&self, index: usize) -> Result<&'a [u8], EventError> {
        Ok(self.vector(index, 1)?.0)
    }
}
