//! Byte sources: where a model file's bytes come from. Readers ask for byte ranges on
//! demand, so a model never has to sit whole in memory (or in wasm's 4 GiB).
//!   - `FileSource`: a native file (positioned reads).
//!   - `MemSource`: bytes in memory (tests, small files).
//!   - in the browser, `web::JsSource`: a `File` read with `FileReaderSync` on `File.slice`,
//!     or a URL read with HTTP range requests (see www/src/sources.ts).

use crate::{LabError, Result};

/// Random access to the bytes of one file.
pub trait ByteSource {
    /// The file's name as the user knows it (for error messages).
    fn name(&self) -> String;
    /// Total size in bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` with the bytes at `offset..offset + buf.len()`; reading past the end is an
    /// error naming the file.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// `len` bytes at `offset`, checked against the file's size before allocating.
    fn read_vec(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        check_range(&self.name(), self.len(), offset, len)?;
        let mut buf = vec![0u8; len as usize];
        self.read_at(offset, &mut buf)?;
        Ok(buf)
    }
}

/// The error for a range outside the file: a truncated file or a header that lies.
pub fn check_range(name: &str, size: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(LabError::BadFile(format!(
            "{name}: needs bytes {offset}..{} but the file has only {size} bytes (truncated?)",
            offset as u128 + len as u128
        ))),
    }
}

/// Bytes held in memory.
pub struct MemSource {
    name: String,
    bytes: Vec<u8>,
}

impl MemSource {
    pub fn new(name: impl Into<String>, bytes: Vec<u8>) -> Self {
        MemSource {
            name: name.into(),
            bytes,
        }
    }
}

impl ByteSource for MemSource {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(&self.name, self.len(), offset, buf.len() as u64)?;
        let start = offset as usize;
        buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
        Ok(())
    }
}

/// A native file, read with positioned reads (no shared cursor).
#[cfg(not(target_arch = "wasm32"))]
pub struct FileSource {
    name: String,
    file: std::fs::File,
    len: u64,
}

#[cfg(not(target_arch = "wasm32"))]
impl FileSource {
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path)
            .map_err(|e| LabError::Io(format!("cannot open {name}: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| LabError::Io(format!("cannot read {name}: {e}")))?;
        if meta.is_dir() {
            return Err(LabError::Io(format!(
                "{name} is a folder, not a model file"
            )));
        }
        Ok(FileSource {
            name,
            file,
            len: meta.len(),
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl ByteSource for FileSource {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(&self.name, self.len, offset, buf.len() as u64)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file
                .read_exact_at(buf, offset)
                .map_err(|e| LabError::Io(format!("cannot read {}: {e}", self.name)))
        }
        #[cfg(not(unix))]
        {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = &self.file;
            f.seek(SeekFrom::Start(offset))
                .and_then(|_| f.read_exact(buf))
                .map_err(|e| LabError::Io(format!("cannot read {}: {e}", self.name)))
        }
    }
}
