//! Bit-exact JSON form of f64 tensors: little-endian bytes in base64, so resumed optimiser state
//! is identical to the saved one (JSON numbers lose NaN/∞ and may round on parse).

use base64_impl::{decode, encode};
use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An f64 tensor that serialises as `{"shape": [...], "f64le_base64": "..."}`, exact to the bit.
#[derive(Debug, Clone, PartialEq)]
pub struct ExactArray(pub ArrayD<f64>);

#[derive(Serialize, Deserialize)]
struct Wire {
    shape: Vec<usize>,
    f64le_base64: String,
}

impl Serialize for ExactArray {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(self.0.len() * 8);
        // `iter()` walks in logical (row-major) order whatever the memory layout.
        for v in self.0.iter() {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        Wire {
            shape: self.0.shape().to_vec(),
            f64le_base64: encode(&bytes),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ExactArray {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let wire = Wire::deserialize(d)?;
        let bytes = decode(&wire.f64le_base64).map_err(D::Error::custom)?;
        let n: usize = wire.shape.iter().product();
        if bytes.len() != n * 8 {
            return Err(D::Error::custom(format!(
                "tensor of shape {:?} needs {} bytes but the data holds {}",
                wire.shape,
                n * 8,
                bytes.len()
            )));
        }
        let data = bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        ArrayD::from_shape_vec(IxDyn(&wire.shape), data)
            .map(ExactArray)
            .map_err(D::Error::custom)
    }
}

/// Standard base64 (RFC 4648, with padding); written here because it is 50 lines and one use.
mod base64_impl {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn decode(text: &str) -> Result<Vec<u8>, String> {
        let text = text.as_bytes();
        if !text.len().is_multiple_of(4) {
            return Err(format!(
                "base64 data length {} is not a multiple of 4 (truncated?)",
                text.len()
            ));
        }
        let mut out = Vec::with_capacity(text.len() / 4 * 3);
        for (ci, chunk) in text.chunks(4).enumerate() {
            let last = ci + 1 == text.len() / 4;
            let mut n = 0u32;
            let mut pad = 0;
            for (i, &c) in chunk.iter().enumerate() {
                let v = match c {
                    b'A'..=b'Z' => c - b'A',
                    b'a'..=b'z' => c - b'a' + 26,
                    b'0'..=b'9' => c - b'0' + 52,
                    b'+' => 62,
                    b'/' => 63,
                    b'=' if last && i >= 2 => {
                        pad += 1;
                        0
                    }
                    _ => return Err(format!("invalid base64 byte {c:#04x} at {}", ci * 4 + i)),
                };
                if pad > 0 && c != b'=' {
                    return Err("base64 padding in the middle of a group".into());
                }
                n = (n << 6) | u32::from(v);
            }
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_length() {
        for len in 0..20u8 {
            let bytes: Vec<u8> = (0..len)
                .map(|i| i.wrapping_mul(37).wrapping_add(200))
                .collect();
            assert_eq!(decode(&encode(&bytes)), Ok(bytes));
        }
        assert_eq!(encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(encode(b"fo"), "Zm8=");
        assert!(decode("Zm8").is_err());
        assert!(decode("Z=8=").is_err());
    }

    #[test]
    fn exact_array_keeps_nan_inf_and_subnormals() {
        let a = ArrayD::from_shape_vec(
            IxDyn(&[2, 2]),
            vec![f64::NAN, f64::NEG_INFINITY, 5e-324, 0.1 + 0.2],
        )
        .expect("shape");
        let json = serde_json::to_string(&ExactArray(a.clone())).expect("ser");
        let back: ExactArray = serde_json::from_str(&json).expect("de");
        let bits = |x: &ArrayD<f64>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.0), bits(&a));
        assert_eq!(back.0.shape(), &[2, 2]);
    }
}
