//! The GGUF reader (llama.cpp's format, versions 2 and 3, little-endian), strictly
//! validated, and dequantisation of its block quants through candle-core.
//!
//! Layout (all integers little-endian; a string is a u64 length + UTF-8 bytes):
//! ```text
//! "GGUF" | version u32 | n_tensors u64 | n_kv u64
//! n_kv x      key string | value type u32 | value
//!             (value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool,
//!              8 string, 9 array = item type u32 + count u64 + items, 10 u64, 11 i64, 12 f64)
//! n_tensors x name string | n_dims u32 | dims u64 x n_dims (innermost first) | ggml type u32
//!             | offset u64 (relative to the data section, a multiple of the alignment)
//! padding to general.alignment (default 32)
//! data section
//! ```
//! Every count and length is checked against the bytes left in the file before anything is
//! allocated, so a hostile header cannot ask for more memory than the file's own size.

use std::collections::BTreeMap;

use candle_core::quantized::k_quants::{
    BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, GgmlType,
};
use candle_core::quantized::GgmlDType;

use super::{check_tensor_bytes, ByteSource, DType, Format, MetaValue, ModelFile, TensorInfo};
use crate::{LabError, Result};

/// Largest header (metadata + tensor infos) we read; a big tokenizer is a few MiB.
pub const MAX_HEADER_BYTES: u64 = 512 * 1024 * 1024;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Arrays inside arrays deeper than this are refused (no real file nests at all).
const MAX_NESTING: u32 = 8;
/// Array items in all the metadata together. Each becomes a 32-byte `MetaValue`, so a
/// header of one-byte items could otherwise ask for 32 x its size; the largest real
/// tokenizers (256k tokens, their scores, types and merges) hold under 2M.
const MAX_ARRAY_ITEMS: u64 = 1 << 23;
const DEFAULT_ALIGNMENT: u64 = 32;
/// Bytes fetched from the source at a time while parsing the header.
const CHUNK: u64 = 1 << 20;

/// A ggml type id: our type, elements per block and bytes per block (gguf-py's
/// GGML_QUANT_SIZES). None for ids this table does not know.
fn ggml_type(id: u32) -> Option<(DType, u64, u64)> {
    let other = |s: &str| DType::Other(s.to_string());
    let t = match id {
        0 => (DType::F32, 1, 4),
        1 => (DType::F16, 1, 2),
        2 => (DType::Q4_0, 32, 18),
        3 => (DType::Q4_1, 32, 20),
        6 => (DType::Q5_0, 32, 22),
        7 => (DType::Q5_1, 32, 24),
        8 => (DType::Q8_0, 32, 34),
        9 => (DType::Q8_1, 32, 40),
        10 => (DType::Q2K, 256, 84),
        11 => (DType::Q3K, 256, 110),
        12 => (DType::Q4K, 256, 144),
        13 => (DType::Q5K, 256, 176),
        14 => (DType::Q6K, 256, 210),
        15 => (DType::Q8K, 256, 292),
        16 => (other("IQ2_XXS"), 256, 66),
        17 => (other("IQ2_XS"), 256, 74),
        18 => (other("IQ3_XXS"), 256, 98),
        19 => (other("IQ1_S"), 256, 50),
        20 => (other("IQ4_NL"), 32, 18),
        21 => (other("IQ3_S"), 256, 110),
        22 => (other("IQ2_S"), 256, 82),
        23 => (other("IQ4_XS"), 256, 136),
        24 => (DType::I8, 1, 1),
        25 => (DType::I16, 1, 2),
        26 => (DType::I32, 1, 4),
        27 => (DType::I64, 1, 8),
        28 => (DType::F64, 1, 8),
        29 => (other("IQ1_M"), 256, 56),
        30 => (DType::BF16, 1, 2),
        34 => (other("TQ1_0"), 256, 54),
        35 => (other("TQ2_0"), 256, 66),
        _ => return None,
    };
    Some(t)
}

/// The candle type for the quants we dequantise, with its block geometry.
fn candle_type(d: &DType) -> Option<GgmlDType> {
    Some(match d {
        DType::Q4_0 => GgmlDType::Q4_0,
        DType::Q4_1 => GgmlDType::Q4_1,
        DType::Q5_0 => GgmlDType::Q5_0,
        DType::Q5_1 => GgmlDType::Q5_1,
        DType::Q8_0 => GgmlDType::Q8_0,
        DType::Q4K => GgmlDType::Q4K,
        DType::Q5K => GgmlDType::Q5K,
        DType::Q6K => GgmlDType::Q6K,
        _ => return None,
    })
}

/// A cursor over the file's header: the prefix read so far is kept in memory and extended
/// a chunk at a time, never past the header limit.
struct Header<'a> {
    src: &'a dyn ByteSource,
    name: String,
    len: u64,
    buf: Vec<u8>,
    pos: u64,
    /// Array items read so far (see MAX_ARRAY_ITEMS).
    array_items: u64,
}

impl<'a> Header<'a> {
    fn bad(&self, msg: impl std::fmt::Display) -> LabError {
        LabError::BadFile(format!("{}: {msg}", self.name))
    }

    /// Bytes of the file after the cursor.
    fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&[u8]> {
        let end = match self.pos.checked_add(n) {
            Some(end) if end <= self.len => end,
            _ => {
                return Err(self.bad(format!(
                    "truncated GGUF header: {what} at byte {} needs {n} bytes, the file has {}",
                    self.pos, self.len
                )))
            }
        };
        if end > MAX_HEADER_BYTES {
            return Err(self.bad(format!(
                "GGUF header is larger than the limit of {MAX_HEADER_BYTES} bytes"
            )));
        }
        let have = self.buf.len() as u64;
        if end > have {
            let want = (end - have).max(CHUNK).min(self.len - have);
            let mut more = vec![0u8; want as usize];
            self.src.read_at(have, &mut more)?;
            self.buf.extend_from_slice(&more);
        }
        let start = self.pos as usize;
        self.pos = end;
        self.buf
            .get(start..end as usize)
            .ok_or_else(|| LabError::BadFile(format!("{}: header read failed", self.name)))
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let b = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items of at least `min_item_bytes` each, checked against the file.
    fn count(&mut self, min_item_bytes: u64, what: &str) -> Result<u64> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n.saturating_mul(min_item_bytes) > self.remaining() {
            return Err(self.bad(format!(
                "{what} at byte {at} is {n}, more than the {} bytes left in the file can hold",
                self.remaining()
            )));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n > self.remaining() {
            return Err(self.bad(format!(
                "{what}: string length {n} at byte {at} runs past the end of the file ({} bytes)",
                self.len
            )));
        }
        let bytes = self.take(n, what)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// A metadata value of GGUF value type `ty`.
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::UInt(self.u8(key)? as u64),
            1 => MetaValue::Int(self.u8(key)? as i8 as i64),
            2 => MetaValue::UInt(self.u16(key)? as u64),
            3 => MetaValue::Int(self.u16(key)? as i16 as i64),
            4 => MetaValue::UInt(self.u32(key)? as u64),
            5 => MetaValue::Int(self.u32(key)? as i32 as i64),
            6 => MetaValue::Float(f32::from_bits(self.u32(key)?) as f64),
            7 => match self.u8(key)? {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.bad(format!("metadata {key}: bool value {b} is not 0 or 1"))),
            },
            8 => MetaValue::Str(self.string(key)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(self.bad(format!(
                        "metadata {key}: arrays nested deeper than {MAX_NESTING}"
                    )));
                }
                let item = self.u32(key)?;
                let Some(min) = value_min_bytes(item) else {
                    return Err(self.bad(format!(
                        "metadata {key}: unknown array item type {item} (expected 0..=12)"
                    )));
                };
                let n = self.count(min, &format!("metadata {key}: array count"))?;
                self.array_items = self.array_items.saturating_add(n);
                if self.array_items > MAX_ARRAY_ITEMS {
                    return Err(self.bad(format!(
                        "metadata {key}: the metadata arrays hold more than {MAX_ARRAY_ITEMS} \
                         values in all, over the limit"
                    )));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(item, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::UInt(self.u64(key)?),
            11 => MetaValue::Int(self.u64(key)? as i64),
            12 => MetaValue::Float(f64::from_bits(self.u64(key)?)),
            _ => {
                return Err(self.bad(format!(
                    "metadata {key}: unknown value type {ty} (expected 0..=12)"
                )))
            }
        })
    }
}

/// The fewest bytes a value of this type takes in the file (None: not a value type).
fn value_min_bytes(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

pub fn open(src: &dyn ByteSource) -> Result<ModelFile> {
    let mut h = Header {
        src,
        name: src.name(),
        len: src.len(),
        buf: Vec::new(),
        pos: 0,
        array_items: 0,
    };
    let magic = h.array::<4>("magic")?;
    if &magic != b"GGUF" {
        return Err(h.bad(format!(
            "not a GGUF file: magic is {magic:?}, expected \"GGUF\""
        )));
    }
    let version = h.u32("version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(h.bad(
                "GGUF version 1 is not supported (expected version 2 or 3; re-convert the model \
                 with a recent llama.cpp)",
            ))
        }
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(h.bad(
                "big-endian GGUF is not supported (expected a little-endian file, version 2 or 3)",
            ))
        }
        v => {
            return Err(h.bad(format!(
                "unsupported GGUF version {v} (expected version 2 or 3)"
            )))
        }
    }
    // The smallest tensor info is an empty name (8), n_dims (4), type (4) and offset (8).
    let n_tensors = h.count(24, "tensor count")?;
    // The smallest key/value is an empty key (8), a type (4) and a one-byte value.
    let n_kv = h.count(13, "metadata count")?;

    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = h.string("metadata key")?;
        let ty = h.u32(&format!("metadata {key}: type"))?;
        let value = h.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(h.bad(format!("metadata key {key} appears twice")));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(h.bad(format!(
                    "general.alignment is {v:?}, expected a power of two greater than 0"
                )))
            }
        },
    };

    // Tensor infos; offsets are checked once the data section's start is known.
    struct Raw {
        name: String,
        shape: Vec<usize>,
        dtype: DType,
        rel: u64,
        nbytes: Option<u64>,
    }
    let mut raws = Vec::with_capacity(n_tensors as usize);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..n_tensors {
        let name = h.string("tensor name")?;
        let n_dims = h.u32(&format!("tensor {name}: n_dims"))?;
        if n_dims > MAX_DIMS {
            return Err(h.bad(format!(
                "tensor {name}: n_dims is {n_dims}, at most {MAX_DIMS} expected"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = h.u64(&format!("tensor {name}: dims"))?;
            let d = usize::try_from(d)
                .map_err(|_| h.bad(format!("tensor {name}: dimension {d} is too large")))?;
            dims.push(d);
        }
        let elements = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(|| {
                h.bad(format!(
                    "tensor {name}: dims {dims:?} have too many elements (overflow)"
                ))
            })?;
        let type_id = h.u32(&format!("tensor {name}: type"))?;
        let rel = h.u64(&format!("tensor {name}: offset"))?;
        let (dtype, nbytes) = match ggml_type(type_id) {
            Some((dtype, block, size)) => {
                // ggml quantises along the innermost dimension, whole blocks per row.
                let row = dims.first().copied().unwrap_or(1) as u64;
                if !row.is_multiple_of(block) {
                    return Err(h.bad(format!(
                        "tensor {name}: row length {row} is not a multiple of the {} block size {block}",
                        dtype.name()
                    )));
                }
                let nbytes = (elements / block).checked_mul(size).ok_or_else(|| {
                    h.bad(format!(
                        "tensor {name}: dims {dims:?} have too many bytes (overflow)"
                    ))
                })?;
                (dtype, Some(nbytes))
            }
            // Listed, never read: its size is unknown, so only its start is checked.
            None => (DType::Other(format!("type {type_id}")), None),
        };
        if !seen.insert(name.clone()) {
            return Err(h.bad(format!("tensor {name} appears twice")));
        }
        dims.reverse();
        raws.push(Raw {
            name,
            shape: dims,
            dtype,
            rel,
            nbytes,
        });
    }

    let data_start = h
        .pos
        .div_ceil(alignment)
        .checked_mul(alignment)
        .ok_or_else(|| {
            h.bad(format!(
                "general.alignment {alignment} puts the data section past any file"
            ))
        })?;
    if data_start > h.len {
        return Err(h.bad(format!(
            "the data section would start at byte {data_start}, past the end of the file ({} bytes)",
            h.len
        )));
    }
    let mut tensors = Vec::with_capacity(raws.len());
    for r in raws {
        if r.rel % alignment != 0 {
            return Err(h.bad(format!(
                "tensor {}: offset {} is not a multiple of the alignment {alignment}",
                r.name, r.rel
            )));
        }
        let nbytes = r.nbytes.unwrap_or(0);
        let offset = data_start.checked_add(r.rel);
        match offset.and_then(|o| o.checked_add(nbytes)) {
            Some(end) if end <= h.len => {}
            _ => {
                return Err(h.bad(format!(
                    "tensor {}: data at {}..{} runs past the end of the file ({} bytes)",
                    r.name,
                    data_start as u128 + r.rel as u128,
                    data_start as u128 + r.rel as u128 + nbytes as u128,
                    h.len
                )))
            }
        }
        tensors.push(TensorInfo {
            name: r.name,
            shape: r.shape,
            dtype: r.dtype,
            offset: data_start + r.rel,
            nbytes,
        });
    }
    Ok(ModelFile {
        format: Format::Gguf,
        tensors,
        metadata,
    })
}

/// A quantised tensor's values as f32 (`elements` already checked to fit in memory).
pub(crate) fn dequantize(
    src: &dyn ByteSource,
    t: &TensorInfo,
    elements: usize,
) -> Result<Vec<f32>> {
    let name = src.name();
    let bad = |msg: String| LabError::BadFile(format!("{name}: tensor {}: {msg}", t.name));
    let Some(ggml) = candle_type(&t.dtype) else {
        return Err(bad(format!(
            "type {} cannot be dequantised here",
            t.dtype.name()
        )));
    };
    let (block, size) = (ggml.block_size(), ggml.type_size());
    // Whole blocks, whole rows, and exactly that many bytes: the blocks are then viewed in
    // place (see `blocks_to_f32`).
    if !elements.is_multiple_of(block) || t.shape.last().is_some_and(|row| row % block != 0) {
        return Err(bad(format!(
            "shape {:?} is not made of whole {} blocks of {block}",
            t.shape,
            t.dtype.name()
        )));
    }
    let expected = (elements / block) as u64 * size as u64;
    check_tensor_bytes(src, t, expected)?;
    // Read straight into 8-byte aligned memory, which the blocks are viewed in place from.
    let mut aligned = vec![0u64; (expected as usize).div_ceil(8)];
    let raw: &mut [u8] = bytemuck::cast_slice_mut(&mut aligned);
    let raw = &mut raw[..expected as usize];
    src.read_at(t.offset, raw)?;
    let mut out = vec![0f32; elements];
    let raw: &[u8] = raw;
    let unchecked = || bad("internal error: block buffer of the wrong size".to_string());
    match t.dtype {
        DType::Q4_0 => blocks_to_f32::<BlockQ4_0>(raw, &mut out).ok_or_else(unchecked)?,
        DType::Q4_1 => blocks_to_f32::<BlockQ4_1>(raw, &mut out).ok_or_else(unchecked)?,
        DType::Q5_0 => blocks_to_f32::<BlockQ5_0>(raw, &mut out).ok_or_else(unchecked)?,
        DType::Q5_1 => blocks_to_f32::<BlockQ5_1>(raw, &mut out).ok_or_else(unchecked)?,
        DType::Q8_0 => blocks_to_f32::<BlockQ8_0>(raw, &mut out).ok_or_else(unchecked)?,
        DType::Q4K => blocks_to_f32::<BlockQ4K>(raw, &mut out).ok_or_else(unchecked)?,
        DType::Q5K => blocks_to_f32::<BlockQ5K>(raw, &mut out).ok_or_else(unchecked)?,
        DType::Q6K => blocks_to_f32::<BlockQ6K>(raw, &mut out).ok_or_else(unchecked)?,
        _ => {
            return Err(bad(format!(
                "type {} cannot be dequantised here",
                t.dtype.name()
            )))
        }
    }
    Ok(out)
}

/// candle's dequantisation (`GgmlType::to_float`) of the blocks in `raw` into `out`, on
/// pieces of 4096 blocks in parallel (natively and in the threaded wasm). The caller has checked that `raw` holds
/// exactly `out.len() / T::BLCK_SIZE` blocks and is 8-byte aligned; None if not.
fn blocks_to_f32<T: GgmlType + Sync>(raw: &[u8], out: &mut [f32]) -> Option<()> {
    const PIECE: usize = 4096;
    let n = out.len() / T::BLCK_SIZE;
    if raw.len() != n * std::mem::size_of::<T>()
        || !out.len().is_multiple_of(T::BLCK_SIZE)
        || !(raw.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        return None;
    }
    // SAFETY: the block types are #[repr(C)] structs of f16/u8/i8 fields, valid for every
    // bit pattern (candle's qtensor_from_ggml views file bytes the same way); the length
    // and alignment are checked above.
    let blocks: &[T] = unsafe { std::slice::from_raw_parts(raw.as_ptr() as *const T, n) };
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    {
        use rayon::prelude::*;
        blocks
            .par_chunks(PIECE)
            .zip(out.par_chunks_mut(PIECE * T::BLCK_SIZE))
            .for_each(|(b, o)| T::to_float(b, o));
    }
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    for (b, o) in blocks
        .chunks(PIECE)
        .zip(out.chunks_mut(PIECE * T::BLCK_SIZE))
    {
        T::to_float(b, o);
    }
    Some(())
}
