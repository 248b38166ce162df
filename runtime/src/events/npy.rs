//! NumPy `.npy` (v1-v3): structured event arrays in, `f32` frame tensors out and back in.
//! Parses the header's Python-literal dict itself; fields may be any integer dtype, either endianness, with padding.

use std::io::Write;
use std::path::Path;

use ndarray::{Array4, ArrayView4};

use super::cursor::Cursor;
use super::error::EventError;
use super::io::{map_file, write_atomic};
use super::types::{ReadOptions, Recording, Sink};

const MAGIC: &[u8] = b"\x93NUMPY";
/// Deepest nesting accepted in a header literal; real headers nest 3 levels.
const MAX_DEPTH: usize = 16;

/// Field-name spellings accepted for each event column (tonic, expelliarmus, Prophesee, DV).
pub(crate) const T_NAMES: &[&str] = &["t", "ts", "timestamp", "timestamps"];
pub(crate) const X_NAMES: &[&str] = &["x"];
pub(crate) const Y_NAMES: &[&str] = &["y"];
pub(crate) const P_NAMES: &[&str] = &["p", "pol", "polarity", "on"];

/// Reads a 1-D structured event array; `p > 0` counts as ON (so `-1/+1` polarities work too).
pub fn read(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Recording, EventError> {
    let path = path.as_ref();
    let bytes = map_file(path)?;
    decode(&bytes, path, opts)
}

/// Decodes `.npy` bytes held in memory; errors name the file as `<memory>`.
pub fn from_bytes(bytes: &[u8], opts: &ReadOptions) -> Result<Recording, EventError> {
    decode(bytes, Path::new("<memory>"), opts)
}

pub(crate) fn decode(
    bytes: &[u8],
    file: &Path,
    opts: &ReadOptions,
) -> Result<Recording, EventError> {
    let arr = NpyArray::parse(bytes, file)?;
    if arr.shape.len() != 1 {
        return Err(EventError::invalid(
            file,
            format!(
                "event array has shape {:?}; expected a 1-D structured array",
                arr.shape
            ),
        ));
    }
    let [t, x, y, p] = [T_NAMES, X_NAMES, Y_NAMES, P_NAMES].map(|names| arr.field(names));
    let (Some(t), Some(x), Some(y), Some(p)) = (t, x, y, p) else {
        return Err(EventError::invalid(
            file,
            "the array's dtype lacks one of the fields t, x, y, p; save a structured array with those fields",
        ));
    };
    let mut rec = Recording::default();
    let mut sink = Sink::new(&mut rec, file, opts, None);
    sink.reserve(arr.len);
    for i in 0..arr.len {
        let at = arr.data_at + (i * arr.itemsize) as u64;
        let [t, x, y, p] = [t, x, y, p].map(|c| arr.value(i, c));
        let t = i64::try_from(t).map_err(|_| {
            EventError::corrupt(file, at, format!("timestamp {t} does not fit i64"))
        })?;
        let clamp = |v: i128| i64::try_from(v).unwrap_or(i64::MAX);
        sink.push(at, t, clamp(x), clamp(y), p > 0)?;
    }
    Ok(rec)
}

/// A parsed array header plus its data, borrowed from the file bytes.
pub(crate) struct NpyArray<'a> {
    data: &'a [u8],
    /// File offset of the first record.
    pub(crate) data_at: u64,
    pub(crate) shape: Vec<usize>,
    pub(crate) len: usize,
    itemsize: usize,
    dtype: Dtype,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scalar {
    kind: u8,
    size: usize,
    big_endian: bool,
}

#[derive(Debug, Clone)]
enum Dtype {
    Scalar(Scalar),
    Struct(Vec<(String, usize, Dtype)>),
    /// Anything only skipped over (padding, strings, subarrays): its size.
    Opaque(usize),
}

/// Where a column lives inside a record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Column {
    offset: usize,
    scalar: Scalar,
}

impl Dtype {
    fn size(&self) -> usize {
        match self {
            Dtype::Scalar(s) => s.size,
            Dtype::Struct(fields) => fields.iter().map(|(_, _, d)| d.size()).sum(),
            Dtype::Opaque(n) => *n,
        }
    }
}

impl<'a> NpyArray<'a> {
    pub(crate) fn parse(bytes: &'a [u8], file: &'a Path) -> Result<Self, EventError> {
        let mut cur = Cursor::new(bytes, file);
        if cur.take(MAGIC.len(), "NumPy magic")? != MAGIC {
            return Err(EventError::corrupt(file, 0, "missing `\\x93NUMPY` magic"));
        }
        let major = cur.u8("NumPy version")?;
        cur.u8("NumPy version")?;
        let header_len = match major {
            1 => usize::from(cur.u16_le("NumPy header length")?),
            2 | 3 => cur.u32_le("NumPy header length")? as usize,
            v => {
                return Err(EventError::UnsupportedVersion {
                    file: file.to_path_buf(),
                    offset: 6,
                    format: "NumPy .npy",
                    found: v.to_string(),
                    supported: "1.x, 2.x, 3.x",
                });
            }
        };
        let header_at = cur.offset();
        let header = cur.take(header_len, "NumPy header")?;
        let bad =
            |what: String| EventError::corrupt(file, header_at, format!("NumPy header: {what}"));
        let text = String::from_utf8_lossy(header);
        let dict = Literal::parse(&text).map_err(bad)?;
        let Literal::Dict(entries) = dict else {
            return Err(bad("not a dict".into()));
        };
        let get = |key: &str| {
            entries
                .iter()
                .find(|(k, _)| matches!(k, Literal::Str(s) if s == key))
                .map(|(_, v)| v)
                .ok_or_else(|| bad(format!("no `{key}` entry")))
        };
        let dtype = parse_dtype(get("descr")?, 0).map_err(bad)?;
        let fortran = matches!(get("fortran_order")?, Literal::Bool(true));
        let Literal::Tuple(dims) = get("shape")? else {
            return Err(bad("`shape` is not a tuple".into()));
        };
        let shape = dims
            .iter()
            .map(|d| match d {
                Literal::Int(n) => {
                    usize::try_from(*n).map_err(|_| bad(format!("negative dimension {n}")))
                }
                _ => Err(bad("non-integer dimension".into())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if fortran && shape.iter().filter(|&&d| d > 1).count() > 1 {
            return Err(EventError::invalid(
                file,
                "Fortran-ordered arrays are not supported; save with np.ascontiguousarray",
            ));
        }
        let len = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad("shape overflows".into()))?;
        let itemsize = dtype.size();
        let data_len = len
            .checked_mul(itemsize)
            .ok_or_else(|| bad("data size overflows".into()))?;
        let data_at = cur.offset();
        // NumPy itself ignores bytes after the data, so we do too.
        let data = cur.take(data_len, "NumPy array data (shape x itemsize)")?;
        Ok(Self {
            data,
            data_at,
            shape,
            len,
            itemsize,
            dtype,
        })
    }

    /// The integer/bool column named by one of `names`: a top-level field of a structured dtype.
    pub(crate) fn field(&self, names: &[&str]) -> Option<Column> {
        let Dtype::Struct(fields) = &self.dtype else {
            return None;
        };
        fields.iter().find_map(|(name, offset, d)| match d {
            Dtype::Scalar(s) if names.contains(&name.as_str()) && is_integer(*s) => Some(Column {
                offset: *offset,
                scalar: *s,
            }),
            _ => None,
        })
    }

    /// The whole array as one column, when its dtype is a plain integer/bool.
    pub(crate) fn as_column(&self) -> Option<Column> {
        match self.dtype {
            Dtype::Scalar(s) if is_integer(s) => Some(Column {
                offset: 0,
                scalar: s,
            }),
            _ => None,
        }
    }

    pub(crate) fn is_f32(&self) -> bool {
        matches!(
            self.dtype,
            Dtype::Scalar(Scalar {
                kind: b'f',
                size: 4,
                ..
            })
        )
    }

    /// Value of `col` in record `i` (`i < len`; `Column`s only come from this array's dtype).
    pub(crate) fn value(&self, i: usize, col: Column) -> i128 {
        let at = i * self.itemsize + col.offset;
        let raw = &self.data[at..at + col.scalar.size];
        let mut buf = [0u8; 8];
        if col.scalar.big_endian {
            buf[8 - raw.len()..].copy_from_slice(raw);
            buf.reverse();
        } else {
            buf[..raw.len()].copy_from_slice(raw);
        }
        let u = u64::from_le_bytes(buf);
        match col.scalar.kind {
            b'i' => {
                let shift = 64 - 8 * col.scalar.size as u32;
                i128::from(((u << shift) as i64) >> shift)
            }
            _ => i128::from(u),
        }
    }

    fn f32s(&self) -> impl Iterator<Item = f32> + '_ {
        let big = matches!(
            self.dtype,
            Dtype::Scalar(Scalar {
                big_endian: true,
                ..
            })
        );
        self.data.chunks_exact(4).map(move |c| {
            let b = [c[0], c[1], c[2], c[3]];
            if big {
                f32::from_be_bytes(b)
            } else {
                f32::from_le_bytes(b)
            }
        })
    }
}

fn is_integer(s: Scalar) -> bool {
    matches!(s.kind, b'i' | b'u' | b'b') && matches!(s.size, 1 | 2 | 4 | 8)
}

fn parse_dtype(lit: &Literal, depth: usize) -> Result<Dtype, String> {
    if depth > MAX_DEPTH {
        return Err("dtype nests too deeply".into());
    }
    match lit {
        Literal::Str(s) => parse_typestr(s),
        Literal::List(fields) => {
            let mut out = Vec::with_capacity(fields.len());
            let mut offset = 0usize;
            for f in fields {
                let Literal::Tuple(parts) = f else {
                    return Err("dtype field is not a tuple".into());
                };
                let (name, ty, sub) = match parts.as_slice() {
                    [Literal::Str(n), t] => (n, t, None),
                    [Literal::Str(n), t, Literal::Tuple(shape)] => (n, t, Some(shape)),
                    // (title, name) pairs name a field twice; the second is the key.
                    [Literal::Tuple(tn), t] => match tn.as_slice() {
                        [_, Literal::Str(n)] => (n, t, None),
                        _ => return Err("malformed dtype field title".into()),
                    },
                    _ => return Err("malformed dtype field".into()),
                };
                let mut d = parse_dtype(ty, depth + 1)?;
                if let Some(shape) = sub {
                    let count = shape.iter().try_fold(1usize, |a, d| match d {
                        Literal::Int(n) => usize::try_from(*n).ok().and_then(|n| a.checked_mul(n)),
                        _ => None,
                    });
                    let size = count
                        .and_then(|c| c.checked_mul(d.size()))
                        .ok_or("bad subarray shape")?;
                    d = Dtype::Opaque(size);
                }
                let size = d.size();
                out.push((name.clone(), offset, d));
                offset = offset.checked_add(size).ok_or("dtype size overflows")?;
            }
            Ok(Dtype::Struct(out))
        }
        _ => Err("descr is neither a type string nor a field list".into()),
    }
}

fn parse_typestr(s: &str) -> Result<Dtype, String> {
    let mut chars = s.chars();
    let (big_endian, rest) = match chars.next() {
        Some('>' | '!') => (true, chars.as_str()),
        Some('<' | '|' | '=') => (false, chars.as_str()),
        _ => (false, s),
    };
    let mut rc = rest.chars();
    let kind = rc
        .next()
        .ok_or_else(|| format!("empty type string {s:?}"))?;
    let digits: String = rc
        .as_str()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let n: usize = digits
        .parse()
        .map_err(|_| format!("type string {s:?} has no size"))?;
    let kind = u8::try_from(kind).map_err(|_| format!("bad type string {s:?}"))?;
    Ok(match kind {
        b'i' | b'u' | b'b' | b'f' => Dtype::Scalar(Scalar {
            kind,
            size: n,
            big_endian,
        }),
        b'U' => Dtype::Opaque(n.checked_mul(4).ok_or("type size overflows")?),
        _ => Dtype::Opaque(n),
    })
}

/// The subset of Python literals NumPy writes into headers.
#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Str(String),
    Int(i64),
    Bool(bool),
    None,
    List(Vec<Literal>),
    Tuple(Vec<Literal>),
    Dict(Vec<(Literal, Literal)>),
}

impl Literal {
    fn parse(text: &str) -> Result<Literal, String> {
        let mut p = LitParser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value(0)?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("unexpected text at header byte {}", p.i));
        }
        Ok(v)
    }
}

struct LitParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl LitParser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Literal, String> {
        if depth > MAX_DEPTH {
            return Err("header literal nests too deeply".into());
        }
        self.ws();
        let c = *self.s.get(self.i).ok_or("header ends early")?;
        match c {
            b'{' => {
                let items = self.seq(b'}', depth, true)?;
                let mut pairs = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                Ok(Literal::Dict(pairs))
            }
            b'[' => Ok(Literal::List(self.seq(b']', depth, false)?)),
            b'(' => Ok(Literal::Tuple(self.seq(b')', depth, false)?)),
            b'\'' | b'"' => {
                let start = self.i + 1;
                let end = self.s[start..]
                    .iter()
                    .position(|&b| b == c)
                    .ok_or("unterminated string")?;
                self.i = start + end + 1;
                Ok(Literal::Str(
                    String::from_utf8_lossy(&self.s[start..start + end]).into_owned(),
                ))
            }
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                self.i += 1;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|b| b.is_ascii_digit() || *b == b'L')
                {
                    self.i += 1;
                }
                let text = String::from_utf8_lossy(&self.s[start..self.i]);
                text.trim_end_matches('L')
                    .parse()
                    .map(Literal::Int)
                    .map_err(|_| format!("bad integer {text:?}"))
            }
            _ => {
                for (word, lit) in [
                    ("True", Literal::Bool(true)),
                    ("False", Literal::Bool(false)),
                    ("None", Literal::None),
                ] {
                    if self.s[self.i..].starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Ok(lit);
                    }
                }
                Err(format!(
                    "unexpected character {:?} at header byte {}",
                    c as char, self.i
                ))
            }
        }
    }

    /// Items up to `close`, separated by `,` (and by `:` inside dicts); a trailing comma is fine.
    fn seq(&mut self, close: u8, depth: usize, dict: bool) -> Result<Vec<Literal>, String> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            self.ws();
            if self.s.get(self.i) == Some(&close) {
                self.i += 1;
                return Ok(out);
            }
            out.push(self.value(depth + 1)?);
            self.ws();
            let sep = if dict && out.len() % 2 == 1 {
                b':'
            } else {
                b','
            };
            match self.s.get(self.i) {
                Some(&b) if b == sep => self.i += 1,
                Some(&b) if b == close && sep == b',' => {}
                _ => {
                    return Err(format!(
                        "expected {:?} at header byte {}",
                        sep as char, self.i
                    ));
                }
            }
        }
    }
}

/// Saves a `[T, 2, H, W]` frame tensor as a little-endian `f32` `.npy` (v1.0), atomically.
pub fn save_frames_npy(frames: &Array4<f32>, path: impl AsRef<Path>) -> Result<(), EventError> {
    let path = path.as_ref();
    write_atomic(path, |w| write_f32_npy(w, frames.view()))
}

fn write_f32_npy(w: &mut dyn Write, a: ArrayView4<f32>) -> std::io::Result<()> {
    let shape = a.shape();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}, {}, {}), }}",
        shape[0], shape[1], shape[2], shape[3]
    );
    // Data must start on a 64-byte boundary: magic(6) + version(2) + length(2) + header + '\n'.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    w.write_all(MAGIC)?;
    w.write_all(&[1, 0])?;
    let len = u16::try_from(header.len()).map_err(std::io::Error::other)?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    for v in a.iter() {
        w.write_all(&v.to_le_bytes())?;
    }
    Ok(())
}

/// Loads a 4-D `f32` `.npy` such as [`save_frames_npy`] writes.
pub fn load_frames_npy(path: impl AsRef<Path>) -> Result<Array4<f32>, EventError> {
    let path = path.as_ref();
    let bytes = map_file(path)?;
    let arr = NpyArray::parse(&bytes, path)?;
    let [t, c, h, w] = <[usize; 4]>::try_from(arr.shape.as_slice()).map_err(|_| {
        EventError::invalid(
            path,
            format!("shape {:?} is not 4-D [T, C, H, W]", arr.shape),
        )
    })?;
    if !arr.is_f32() {
        return Err(EventError::invalid(
            path,
            "dtype is not f32; expected a frame tensor",
        ));
    }
    Array4::from_shape_vec((t, c, h, w), arr.f32s().collect())
        .map_err(|e| EventError::invalid(path, format!("cannot shape the data: {e}")))
}
