//! NumPy `.npz` reader: a zip (stored or deflated) of `.npy` members holding events, either one
//! structured array with t/x/y/p fields or separate 1-D arrays named t, x, y, p (as `np.savez(t=…)` writes).

use std::io::{Cursor as IoCursor, Read};
use std::path::{Path, PathBuf};

use super::error::EventError;
use super::io::map_file;
use super::npy::{self, NpyArray, P_NAMES, T_NAMES, X_NAMES, Y_NAMES};
use super::types::{ReadOptions, Recording, Sink};

/// Largest member decompressed; a bigger claim is a corrupt or hostile archive.
const MAX_MEMBER: u64 = 1 << 32;

/// Reads events from an `.npz` archive through a memory map.
pub fn read(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Recording, EventError> {
    let path = path.as_ref();
    let bytes = map_file(path)?;
    decode(&bytes, path, opts)
}

/// Decodes `.npz` bytes held in memory; errors name the file as `<memory>`.
pub fn from_bytes(bytes: &[u8], opts: &ReadOptions) -> Result<Recording, EventError> {
    decode(bytes, Path::new("<memory>"), opts)
}

pub(crate) fn decode(
    bytes: &[u8],
    file: &Path,
    opts: &ReadOptions,
) -> Result<Recording, EventError> {
    let zip_err =
        |e: zip::result::ZipError| EventError::corrupt(file, 0, format!("zip archive: {e}"));
    let mut archive = zip::ZipArchive::new(IoCursor::new(bytes)).map_err(zip_err)?;
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..archive.len() {
        let mut m = archive.by_index(i).map_err(zip_err)?;
        let name = m.name().map_err(zip_err)?;
        let Some(stem) = name.strip_suffix(".npy").map(str::to_owned) else {
            continue;
        };
        let at = m.header_start();
        let mut data = Vec::new();
        (&mut m)
            .take(MAX_MEMBER)
            .read_to_end(&mut data)
            .map_err(|e| EventError::corrupt(file, at, format!("member {stem}.npy: {e}")))?;
        members.push((stem, data));
    }
    let member_path = |stem: &str| PathBuf::from(format!("{}!{stem}.npy", file.display()));

    // Separate column arrays take precedence: that is what `np.savez(f, t=…, x=…)` produces.
    let find = |names: &[&str]| members.iter().find(|(s, _)| names.contains(&s.as_str()));
    if let (Some(t), Some(x), Some(y), Some(p)) =
        (find(T_NAMES), find(X_NAMES), find(Y_NAMES), find(P_NAMES))
    {
        let paths = [t, x, y, p].map(|(s, _)| member_path(s));
        let mut cols = Vec::with_capacity(4);
        for ((_, data), path) in [t, x, y, p].into_iter().zip(&paths) {
            let arr = NpyArray::parse(data, path)?;
            let col = arr
                .as_column()
                .filter(|_| arr.shape.len() == 1)
                .ok_or_else(|| {
                    EventError::invalid(path, "column must be a 1-D integer or bool array")
                })?;
            cols.push((arr, col));
        }
        let n = cols[0].0.len;
        if let Some((arr, _)) = cols.iter().find(|(a, _)| a.len != n) {
            return Err(EventError::invalid(
                file,
                format!(
                    "columns t, x, y, p differ in length ({n} vs {}); save equal-length arrays",
                    arr.len
                ),
            ));
        }
        // Columns live in different members, so no single byte offset exists: errors say which
        // event by index, and the path says so.
        let label = PathBuf::from(format!(
            "{} (t/x/y/p arrays; offsets are event indices)",
            file.display()
        ));
        let mut rec = Recording::default();
        let mut sink = Sink::new(&mut rec, &label, opts, None);
        sink.reserve(n);
        for i in 0..n {
            let [t, x, y, p] = [0, 1, 2, 3].map(|k| cols[k].0.value(i, cols[k].1));
            let t = i64::try_from(t).map_err(|_| {
                EventError::corrupt(
                    &paths[0],
                    cols[0].0.data_at,
                    format!("timestamp {t} does not fit i64"),
                )
            })?;
            let clamp = |v: i128| i64::try_from(v).unwrap_or(i64::MAX);
            sink.push(i as u64, t, clamp(x), clamp(y), p > 0)?;
        }
        return Ok(rec);
    }

    for (stem, data) in &members {
        let path = member_path(stem);
        let arr = NpyArray::parse(data, &path)?;
        if [T_NAMES, X_NAMES, Y_NAMES, P_NAMES]
            .iter()
            .all(|n| arr.field(n).is_some())
        {
            return npy::decode(data, &path, opts);
        }
    }
    Err(EventError::invalid(
        file,
        "no event array inside: store one structured array with fields t, x, y, p, or arrays named t, x, y, p",
    ))
}
