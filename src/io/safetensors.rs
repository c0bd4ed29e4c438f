//! The safetensors reader (Hugging Face's format), strictly validated.
//!
//! Layout:
//! ```text
//! [0..8)        N, the header length, u64 little-endian
//! [8..8+N)      JSON object: { "__metadata__": {str: str}?,
//!                              "<tensor>": {"dtype": "F16", "shape": [d0, d1, ..],
//!                                           "data_offsets": [begin, end]}, .. }
//! [8+N..)       the data section; a tensor's bytes are begin..end relative to its start
//! ```
//! Everything the header says is checked before it is believed: the header length against
//! the file and a size limit, every tensor's range inside the data section and disjoint
//! from the others, and shape x dtype size == byte length (overflow-checked).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{ByteSource, DType, Format, MetaValue, ModelFile, TensorInfo};
use crate::{LabError, Result};

/// Largest header we read (real headers are a few hundred KiB at most).
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// A safetensors dtype string: our type and its size in bits (F4/F6 are sub-byte).
fn parse_dtype(s: &str) -> Option<(DType, u64)> {
    let d = match s {
        "F64" => (DType::F64, 64),
        "F32" => (DType::F32, 32),
        "F16" => (DType::F16, 16),
        "BF16" => (DType::BF16, 16),
        "I64" => (DType::I64, 64),
        "I32" => (DType::I32, 32),
        "I16" => (DType::I16, 16),
        "I8" => (DType::I8, 8),
        "U8" => (DType::U8, 8),
        "BOOL" => (DType::Bool, 8),
        "U64" | "C64" => (DType::Other(s.to_string()), 64),
        "U32" => (DType::Other(s.to_string()), 32),
        "U16" => (DType::Other(s.to_string()), 16),
        "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => (DType::Other(s.to_string()), 8),
        "F6_E2M3" | "F6_E3M2" => (DType::Other(s.to_string()), 6),
        "F4" => (DType::Other(s.to_string()), 4),
        _ => return None,
    };
    Some(d)
}

pub fn open(src: &dyn ByteSource) -> Result<ModelFile> {
    let name = src.name();
    let len = src.len();
    let bad = |msg: String| LabError::BadFile(format!("{name}: {msg}"));
    if len < 8 {
        return Err(bad(format!(
            "truncated safetensors header: expected an 8-byte header length, the file has {len} bytes"
        )));
    }
    let mut n = [0u8; 8];
    src.read_at(0, &mut n)?;
    let header_len = u64::from_le_bytes(n);
    if header_len > len - 8 {
        return Err(bad(format!(
            "safetensors header length {header_len} bytes runs past the end of the file ({len} bytes)"
        )));
    }
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "safetensors header length {header_len} bytes is over the limit of {MAX_HEADER_BYTES}"
        )));
    }
    let header = src.read_vec(8, header_len)?;
    let json: Value = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("safetensors header is not valid JSON: {e}")))?;
    let Value::Object(entries) = json else {
        return Err(bad("safetensors header is not a JSON object".to_string()));
    };
    let data_start = 8 + header_len;
    let data_len = len - data_start;

    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (key, value) in &entries {
        if key == "__metadata__" {
            let Value::Object(meta) = value else {
                return Err(bad("__metadata__ is not a JSON object".to_string()));
            };
            for (k, v) in meta {
                let Value::String(s) = v else {
                    return Err(bad(format!(
                        "__metadata__ value {k} is not a string (found {v})"
                    )));
                };
                metadata.insert(k.clone(), MetaValue::Str(s.clone()));
            }
            continue;
        }
        tensors.push(tensor_info(&name, key, value, data_start, data_len)?);
    }

    // Ranges must be disjoint: sorted by start, each begins at or after the previous end.
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| (t.offset, t.nbytes));
    let mut previous: Option<&TensorInfo> = None;
    for t in order {
        if t.nbytes == 0 {
            continue;
        }
        if let Some(p) = previous {
            if t.offset < p.offset + p.nbytes {
                return Err(bad(format!(
                    "tensors {} and {} overlap: data {}..{} and {}..{}",
                    p.name,
                    t.name,
                    p.offset - data_start,
                    p.offset - data_start + p.nbytes,
                    t.offset - data_start,
                    t.offset - data_start + t.nbytes
                )));
            }
        }
        previous = Some(t);
    }
    // Keep the file's own order of appearance in the data section (the JSON map is sorted
    // by name, which would put layer 10 before layer 2).
    tensors.sort_by_key(|t| t.offset);
    Ok(ModelFile {
        format: Format::Safetensors,
        tensors,
        metadata,
    })
}

fn tensor_info(
    file: &str,
    name: &str,
    value: &Value,
    data_start: u64,
    data_len: u64,
) -> Result<TensorInfo> {
    let bad = |msg: String| LabError::BadFile(format!("{file}: tensor {name}: {msg}"));
    let Value::Object(entry) = value else {
        return Err(bad(format!("expected an object, found {value}")));
    };
    let field = |key: &str, entry: &Map<String, Value>| -> Result<Value> {
        entry
            .get(key)
            .cloned()
            .ok_or_else(|| bad(format!("the header has no {key}")))
    };
    let dtype_str = match field("dtype", entry)? {
        Value::String(s) => s,
        other => return Err(bad(format!("dtype is not a string (found {other})"))),
    };
    let Some((dtype, bits)) = parse_dtype(&dtype_str) else {
        return Err(bad(format!(
            "unknown dtype \"{dtype_str}\" (expected one of F64, F32, F16, BF16, I64, I32, \
             I16, I8, U8, BOOL, U64, U32, U16, F8_E4M3, F8_E5M2)"
        )));
    };
    let shape = match field("shape", entry)? {
        Value::Array(dims) => dims
            .iter()
            .map(|d| {
                d.as_u64()
                    .and_then(|d| usize::try_from(d).ok())
                    .ok_or_else(|| bad(format!("shape entry {d} is not a non-negative integer")))
            })
            .collect::<Result<Vec<usize>>>()?,
        other => return Err(bad(format!("shape is not an array (found {other})"))),
    };
    let (begin, end) = match field("data_offsets", entry)? {
        Value::Array(o) if o.len() == 2 => match (
            o.first().and_then(Value::as_u64),
            o.get(1).and_then(Value::as_u64),
        ) {
            (Some(b), Some(e)) => (b, e),
            _ => {
                return Err(bad(format!(
                    "data_offsets {o:?} are not two non-negative integers"
                )))
            }
        },
        other => {
            return Err(bad(format!(
                "data_offsets is not [begin, end] (found {other})"
            )))
        }
    };
    if begin > end {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] begin after they end"
        )));
    }
    if end > data_len {
        return Err(bad(format!(
            "data at {begin}..{end} runs past the end of the data section ({data_len} bytes)"
        )));
    }
    let elements = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
        .ok_or_else(|| bad(format!("shape {shape:?} has too many elements (overflow)")))?;
    let expected = elements
        .checked_mul(bits)
        .map(|b| b.div_ceil(8))
        .ok_or_else(|| bad(format!("shape {shape:?} has too many elements (overflow)")))?;
    let nbytes = end - begin;
    if expected != nbytes {
        return Err(bad(format!(
            "shape {shape:?} of {dtype_str} needs {expected} bytes, data_offsets give {nbytes}"
        )));
    }
    Ok(TensorInfo {
        name: name.to_string(),
        shape,
        dtype,
        offset: data_start + begin,
        nbytes,
    })
}

/// One F32 tensor for [`write_f32`]: its name, row-major shape and values.
pub struct F32Tensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: std::borrow::Cow<'a, [f32]>,
}

/// Hands every tensor of a file, in order, to the sink it is given; see [`write_f32_with`].
pub type TensorProducer<'p> =
    dyn Fn(&mut dyn FnMut(F32Tensor<'_>) -> Result<()>) -> Result<()> + 'p;

/// A safetensors header being written: `__metadata__` (string to string), then one entry
/// per tensor in file order, each checked (shape against length, names unique) and placed
/// after the previous one. Shared by [`write_f32_with`] and [`write_tensors`].
struct HeaderBuilder {
    header: Map<String, Value>,
    offset: u64,
}

impl HeaderBuilder {
    fn new(metadata: &BTreeMap<String, String>) -> Self {
        let mut header = Map::new();
        if !metadata.is_empty() {
            let meta: Map<String, Value> = metadata
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            header.insert("__metadata__".into(), Value::Object(meta));
        }
        HeaderBuilder { header, offset: 0 }
    }

    /// The next tensor: `len` values of `bytes` bytes each, as `dtype`.
    fn add(
        &mut self,
        name: &str,
        shape: &[usize],
        len: usize,
        dtype: &str,
        bytes: u64,
    ) -> Result<()> {
        let n: usize = shape.iter().product();
        if n != len {
            return Err(LabError::invalid(format!(
                "{name}: shape {shape:?} holds {n} values, the data {len}"
            )));
        }
        if name == "__metadata__" || self.header.contains_key(name) {
            return Err(LabError::invalid(format!(
                "{name}: a tensor name may appear only once and may not be __metadata__"
            )));
        }
        let end = self.offset + bytes * n as u64;
        self.header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [self.offset, end]}),
        );
        self.offset = end;
        Ok(())
    }

    /// The header's length (u64, little-endian) and its JSON, padded with spaces to a
    /// multiple of 8 bytes as Hugging Face's writer does, so every tensor starts aligned.
    fn write(self, out: &mut dyn std::io::Write) -> Result<()> {
        let mut json = serde_json::to_vec(&Value::Object(self.header))
            .map_err(|e| LabError::invalid(format!("cannot encode the safetensors header: {e}")))?;
        while json.len() % 8 != 0 {
            json.push(b' ');
        }
        out.write_all(&(json.len() as u64).to_le_bytes())
            .map_err(write_error)?;
        out.write_all(&json).map_err(write_error)
    }
}

fn write_error(e: std::io::Error) -> LabError {
    LabError::Io(format!("cannot write the safetensors file: {e}"))
}

/// Writes `tensors` as a safetensors file to `out`, in the given order, all F32
/// little-endian, with `metadata` as `__metadata__` (string to string; transformers wants
/// `{"format": "pt"}`). The header is padded with spaces to a multiple of 8 bytes, as
/// Hugging Face's writer does, so every tensor starts 8-byte aligned. Works on any
/// `std::io::Write`: a file natively, chunks handed to JavaScript for the page's download.
pub fn write_f32(
    out: &mut dyn std::io::Write,
    tensors: &[F32Tensor],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    write_f32_with(out, metadata, &|sink| {
        tensors.iter().try_for_each(|t| {
            sink(F32Tensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: std::borrow::Cow::Borrowed(&t.data),
            })
        })
    })
}

/// [`write_f32`] without holding every tensor at once: `produce` is called twice, first for
/// the header (names and shapes; the data is dropped), then for the data, which is written
/// as it comes. Both calls must hand over the same tensors in the same order (checked), so
/// a model is written one block at a time.
pub fn write_f32_with(
    out: &mut dyn std::io::Write,
    metadata: &BTreeMap<String, String>,
    produce: &TensorProducer<'_>,
) -> Result<()> {
    let mut header = HeaderBuilder::new(metadata);
    let mut layout: Vec<(String, Vec<usize>)> = Vec::new();
    produce(&mut |t| {
        header.add(&t.name, &t.shape, t.data.len(), "F32", 4)?;
        layout.push((t.name, t.shape));
        Ok(())
    })?;
    header.write(out)?;
    let io = write_error;
    let mut buf = Vec::with_capacity(1 << 16);
    let mut next = layout.iter();
    produce(&mut |t| {
        match next.next() {
            Some((name, shape))
                if *name == t.name
                    && *shape == t.shape
                    && t.data.len() == shape.iter().product::<usize>() => {}
            _ => {
                return Err(LabError::invalid(format!(
                    "{}: the tensors changed between the header and the data",
                    t.name
                )))
            }
        }
        for chunk in t.data.chunks(1 << 14) {
            buf.clear();
            for v in chunk {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            out.write_all(&buf).map_err(io)?;
        }
        Ok(())
    })?;
    if next.next().is_some() {
        return Err(LabError::invalid(
            "the tensors changed between the header and the data",
        ));
    }
    out.flush().map_err(io)
}

/// The values of one tensor for [`write_tensors`]: the dtypes a data set needs (F32 pixels,
/// I64 labels, which PyTorch's cross-entropy takes as they are).
pub enum TensorValues<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
}

impl TensorValues<'_> {
    fn len(&self) -> usize {
        match self {
            TensorValues::F32(v) => v.len(),
            TensorValues::I64(v) => v.len(),
        }
    }
}

/// One tensor for [`write_tensors`]: its name, row-major shape and values.
pub struct TypedTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: TensorValues<'a>,
}

/// [`write_f32`] for tensors of mixed dtypes (F32 and I64, little-endian), all in memory; the
/// same header rules (names unique, padded to 8 bytes, tensors in the given order).
pub fn write_tensors(
    out: &mut dyn std::io::Write,
    tensors: &[TypedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut header = HeaderBuilder::new(metadata);
    for t in tensors {
        let (dtype, size) = match t.values {
            TensorValues::F32(_) => ("F32", 4),
            TensorValues::I64(_) => ("I64", 8),
        };
        header.add(&t.name, &t.shape, t.values.len(), dtype, size)?;
    }
    header.write(out)?;
    let io = write_error;
    let mut buf = Vec::with_capacity(1 << 17);
    for t in tensors {
        match t.values {
            TensorValues::F32(v) => {
                for chunk in v.chunks(1 << 14) {
                    buf.clear();
                    chunk
                        .iter()
                        .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
                    out.write_all(&buf).map_err(io)?;
                }
            }
            TensorValues::I64(v) => {
                for chunk in v.chunks(1 << 14) {
                    buf.clear();
                    chunk
                        .iter()
                        .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
                    out.write_all(&buf).map_err(io)?;
                }
            }
        }
    }
    out.flush().map_err(io)
}

#[cfg(test)]
mod write_tests {
    use super::*;
    use crate::io::MemSource;

    #[test]
    fn written_files_read_back() {
        let a = [1.0f32, -2.0, 3.5, 0.0, 5.0, 6.0];
        let tensors = [
            F32Tensor {
                name: "b.weight".into(),
                shape: vec![2, 3],
                data: a[..].into(),
            },
            F32Tensor {
                name: "a.bias".into(),
                shape: vec![1],
                data: vec![7.0f32].into(),
            },
        ];
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let mut bytes = Vec::new();
        write_f32(&mut bytes, &tensors, &meta).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(header_len % 8, 0);
        let src = MemSource::new("t.safetensors", bytes);
        let f = open(&src).unwrap();
        assert_eq!(
            f.metadata.get("format").and_then(|m| m.as_str()),
            Some("pt")
        );
        let b = f.tensor("b.weight").unwrap();
        assert_eq!(b.shape, vec![2, 3]);
        assert_eq!(f.read_f32(&src, b).unwrap(), a.to_vec());
        let c = f.tensor("a.bias").unwrap();
        assert_eq!(f.read_f32(&src, c).unwrap(), vec![7.0]);
        let bad = [F32Tensor {
            name: "x".into(),
            shape: vec![2, 2],
            data: vec![1.0f32].into(),
        }];
        assert!(write_f32(&mut Vec::new(), &bad, &meta).is_err());
    }

    /// Mixed F32/I64 files read back by candle's safetensors loader (an independent reader).
    #[test]
    fn typed_files_read_back_in_candle() {
        let pixels = [0.5f32, -1.25, 3.0, 0.0, 1e-3, 7.0];
        let labels = [3i64, -1, 1 << 40];
        let tensors = [
            TypedTensor {
                name: "images".into(),
                shape: vec![1, 2, 3],
                values: TensorValues::F32(&pixels),
            },
            TypedTensor {
                name: "labels".into(),
                shape: vec![3],
                values: TensorValues::I64(&labels),
            },
        ];
        let mut bytes = Vec::new();
        write_tensors(&mut bytes, &tensors, &BTreeMap::new()).unwrap();
        let back =
            candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).unwrap();
        let images = &back["images"];
        assert_eq!(images.dims(), &[1, 2, 3]);
        assert_eq!(images.dtype(), candle_core::DType::F32);
        let flat: Vec<f32> = images.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(flat, pixels.to_vec());
        assert_eq!(back["labels"].dtype(), candle_core::DType::I64);
        assert_eq!(back["labels"].to_vec1::<i64>().unwrap(), labels.to_vec());
        let bad = [TypedTensor {
            name: "x".into(),
            shape: vec![2],
            values: TensorValues::I64(&labels),
        }];
        let e = write_tensors(&mut Vec::new(), &bad, &BTreeMap::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("x: shape [2] holds 2 values, the data 3"),
            "{e}"
        );
    }
}
