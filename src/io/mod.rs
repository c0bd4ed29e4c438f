//! Model files: byte sources and (next) the safetensors and GGUF readers.

pub mod source;

#[cfg(not(target_arch = "wasm32"))]
pub use source::FileSource;
pub use source::{check_range, ByteSource, MemSource};
