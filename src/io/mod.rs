//! Model files: byte sources and the safetensors and GGUF readers.
//!
//! `ModelFile::open` reads only a file's header (bounded in size), lists its tensors and
//! metadata, and leaves the weights where they are; `ModelFile::read_f32` then reads one
//! tensor's bytes on demand and converts them to f32 (F16/BF16 widened, GGUF quants
//! dequantised). Offsets and sizes are u64 throughout: a model may be far larger than wasm's
//! 4 GiB, only one tensor at a time has to fit in memory.
//!
//! Shapes are row-major, outermost first, whatever the format: a Hugging Face linear is
//! [out, in]; GGUF stores its dims innermost first, so they are reversed on reading.

pub mod gguf;
pub mod safetensors;
pub mod source;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[cfg(not(target_arch = "wasm32"))]
pub use source::FileSource;
pub use source::{check_range, ByteSource, MemSource};

use crate::{LabError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    Safetensors,
    Gguf,
}

/// Element types of both formats. The GGUF block quants keep ggml's names (Q4K is ggml's
/// Q4_K); anything else is `Other` with the format's own name ("U16", "IQ2_XXS", "type 42").
#[allow(non_camel_case_types)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    Other(String),
}

impl DType {
    /// Whether `ModelFile::read_f32` can read tensors of this type (floats, and the GGUF
    /// quants we dequantise). Integer and boolean tensors (ids, masks) are listed only.
    pub fn analysable(&self) -> bool {
        matches!(
            self,
            DType::F32
                | DType::F16
                | DType::BF16
                | DType::Q8_0
                | DType::Q4_0
                | DType::Q4_1
                | DType::Q5_0
                | DType::Q5_1
                | DType::Q4K
                | DType::Q5K
                | DType::Q6K
        )
    }

    pub fn name(&self) -> String {
        match self {
            DType::Other(s) => s.clone(),
            d => format!("{d:?}"),
        }
    }
}

/// One tensor as the file describes it; its bytes are `offset..offset + nbytes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorInfo {
    /// As in the file.
    pub name: String,
    /// Row-major, outermost first (see the module comment).
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// Absolute byte offset in the file.
    pub offset: u64,
    pub nbytes: u64,
}

impl TensorInfo {
    /// Number of elements (the shape was checked for overflow when the file was opened).
    pub fn elements(&self) -> u64 {
        self.shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .unwrap_or(u64::MAX)
    }
}

/// A metadata value: GGUF key/values, safetensors `__metadata__` strings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetaValue {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as a count or size, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            MetaValue::UInt(v) => Some(*v),
            MetaValue::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// An opened model file: its tensors (not their data) and its metadata.
#[derive(Clone, Debug)]
pub struct ModelFile {
    pub format: Format,
    pub tensors: Vec<TensorInfo>,
    pub metadata: BTreeMap<String, MetaValue>,
}

impl ModelFile {
    /// Reads the header of a GGUF or safetensors file, telling them apart by their first
    /// bytes: GGUF starts with the magic "GGUF"; safetensors with an 8-byte little-endian
    /// header length followed by the JSON header, which starts with '{'.
    pub fn open(src: &dyn ByteSource) -> Result<ModelFile> {
        let name = src.name();
        let len = src.len();
        if len == 0 {
            return Err(LabError::BadFile(format!("{name}: the file is empty")));
        }
        let mut head = vec![0u8; len.min(9) as usize];
        src.read_at(0, &mut head)?;
        if head.starts_with(b"GGUF") {
            return gguf::open(src);
        }
        if head.len() == 9 && head.get(8) == Some(&b'{') {
            return safetensors::open(src);
        }
        Err(LabError::BadFile(format!(
            "{name}: not a model file: neither GGUF (magic 'GGUF') nor safetensors \
             (8-byte header length + JSON)"
        )))
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor's values as f32, in row-major order; reads only that tensor's bytes.
    pub fn read_f32(&self, src: &dyn ByteSource, t: &TensorInfo) -> Result<Vec<f32>> {
        let name = src.name();
        if !t.dtype.analysable() {
            return Err(LabError::BadFile(format!(
                "{name}: tensor {} has type {}, which LayerLab cannot read yet",
                t.name,
                t.dtype.name()
            )));
        }
        let elements = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let elements = match elements {
            Some(n) if n.checked_mul(4).is_some() => n,
            _ => {
                return Err(LabError::BadFile(format!(
                    "{name}: tensor {} of shape {:?} is too large to hold in memory here",
                    t.name, t.shape
                )))
            }
        };
        match t.dtype {
            DType::F32 | DType::F16 | DType::BF16 => {
                let size = if t.dtype == DType::F32 { 4 } else { 2 };
                let bytes = read_tensor_bytes(src, t, elements as u64 * size)?;
                Ok(widen(&t.dtype, &bytes))
            }
            _ => gguf::dequantize(src, t, elements),
        }
    }
}

/// The tensor's bytes, after checking that `nbytes` is what its shape and type need and
/// that it fits in memory on this target (usize is 32 bits in wasm).
pub(crate) fn read_tensor_bytes(
    src: &dyn ByteSource,
    t: &TensorInfo,
    expected: u64,
) -> Result<Vec<u8>> {
    check_tensor_bytes(src, t, expected)?;
    src.read_vec(t.offset, t.nbytes)
}

/// `read_tensor_bytes`' checks, for a caller that reads into its own buffer.
pub(crate) fn check_tensor_bytes(
    src: &dyn ByteSource,
    t: &TensorInfo,
    expected: u64,
) -> Result<()> {
    let name = src.name();
    if t.nbytes != expected {
        return Err(LabError::BadFile(format!(
            "{name}: tensor {}: shape {:?} of {} needs {expected} bytes, the file gives {}",
            t.name,
            t.shape,
            t.dtype.name(),
            t.nbytes
        )));
    }
    if usize::try_from(t.nbytes).is_err() {
        return Err(LabError::BadFile(format!(
            "{name}: tensor {} has {} bytes, too many to hold in memory here",
            t.name, t.nbytes
        )));
    }
    check_range(&name, src.len(), t.offset, t.nbytes).map_err(|_| {
        LabError::BadFile(format!(
            "{name}: tensor {}: data at {}..{} runs past the end of the file ({} bytes)",
            t.name,
            t.offset,
            t.offset as u128 + t.nbytes as u128,
            src.len()
        ))
    })
}

/// Little-endian F32, F16 or BF16 bytes as f32 (a trailing partial element is ignored; the
/// caller has checked the length).
pub(crate) fn widen(dtype: &DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
}
