//! GPU tensors and the buffer pool they live in.
//!
//! A `GpuTensor` is a row-major tensor of any rank (f32, or u32 for token ids and indices)
//! in a storage buffer, possibly a view at an offset into a bigger one. Its buffer comes from
//! the context's `BufferPool` and goes back there when the last tensor using it is dropped,
//! so a training step, a calibration batch or a statistics chunk reuses the buffers of the
//! one before instead of allocating (on a software adapter, allocating means zero-filling
//! every new buffer on the CPU).
//!
//! Buffers are bucketed by usage and by size class: sizes round up to the next quarter power
//! of two (at most 25% slack), so tensors of nearby sizes share buckets. Idle buffers beyond
//! `IDLE_CAP` bytes are freed instead of kept.
//!
//! Reuse and ordering. A buffer released while a `Recorder` holds recorded but unsubmitted
//! work may still be read by that work, so it is "pending" until the submission:
//! - a kernel output recorded into the same (only open) recorder may take it at once, since
//!   the recorder's commands run in the order recorded (the earlier reads come first);
//! - a host write (`queue.write_buffer`, which runs before the next submission's commands)
//!   may not: uploads only take buffers whose users have all been submitted.
//!   With more than one recorder open, nothing pending is reused until all but one are done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::{LabError, Result};

/// Idle bytes the pool keeps for reuse; buffers released beyond this are freed.
const IDLE_CAP: u64 = 512 << 20;
/// Bind groups kept for reuse; the cache starts over when full.
const BIND_GROUP_CAP: usize = 1024;

/// A bind group's identity: the pipeline and each binding's (buffer, offset, size).
pub(crate) type BindKey = (wgpu::ComputePipeline, Vec<(wgpu::Buffer, u64, u64)>);

/// What one element is. Both are 4 bytes, so offsets and lengths count elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    /// Token ids, indices, flags.
    U32,
}

/// What a pooled buffer is for (its wgpu usages; one bucket each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Usage {
    /// Tensors: bound as storage, copied to and from.
    Storage,
    /// Kernel parameters (the recorder's uniform arena).
    Uniform,
    /// Readback staging: copied to, mapped for reading.
    Staging,
}

impl Usage {
    fn wgpu(self) -> wgpu::BufferUsages {
        use wgpu::BufferUsages as U;
        match self {
            Usage::Storage => U::STORAGE | U::COPY_SRC | U::COPY_DST,
            Usage::Uniform => U::UNIFORM | U::COPY_DST,
            Usage::Staging => U::MAP_READ | U::COPY_DST,
        }
    }
}

/// Counters of a pool, for tests and benchmarks: `allocations` new buffers against `reuses`
/// of released ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub allocations: u64,
    pub reuses: u64,
    /// Bytes of all buffers allocated so far.
    pub allocated_bytes: u64,
    /// Bytes now held idle for reuse.
    pub idle_bytes: u64,
    /// Released buffers freed because the idle cap was reached.
    pub freed: u64,
    /// Dispatches whose bind group was cached (same pipeline, buffers, offsets) and new.
    pub bind_group_hits: u64,
    pub bind_group_misses: u64,
}

#[derive(Default)]
struct PoolState {
    /// Idle buffers whose users have all been submitted, by (usage, size class).
    free: HashMap<(Usage, u64), Vec<wgpu::Buffer>>,
    /// Released while a recorder was open (see the module comment).
    pending: HashMap<(Usage, u64), Vec<wgpu::Buffer>>,
    open_recorders: usize,
    stats: PoolStats,
    /// Bind groups of pool buffers; a cached group holds its buffers, so it is dropped
    /// whenever the pool frees a buffer.
    bind_groups: HashMap<BindKey, wgpu::BindGroup>,
}

impl PoolState {
    fn settle_pending(&mut self) {
        for (key, mut bufs) in std::mem::take(&mut self.pending) {
            self.free.entry(key).or_default().append(&mut bufs);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Buffers reused across dispatches, steps and runs. One per `GpuContext`; cloning shares it.
#[derive(Clone, Default)]
pub struct BufferPool {
    state: Arc<Mutex<PoolState>>,
}

/// Size class of `bytes`: rounded up to a quarter power of two (4, 8, ..., 16, 20, 24, 28,
/// 32, 40, ...), capped at `max` where that is still enough.
fn size_class(bytes: u64, max: u64) -> u64 {
    let b = bytes.max(4).next_multiple_of(4);
    if b <= 16 {
        return b;
    }
    let step = (1u64 << (63 - b.leading_zeros())) / 4;
    b.next_multiple_of(step).min(max.max(b))
}

impl BufferPool {
    pub fn stats(&self) -> PoolStats {
        lock(&self.state).stats
    }

    /// A buffer of at least `bytes` for `usage`. `gpu_written`: the caller's first write is
    /// a command recorded into the one open recorder (a kernel output), so a buffer released
    /// earlier in that recording may be taken.
    pub(crate) fn take(
        &self,
        device: &wgpu::Device,
        usage: Usage,
        bytes: u64,
        max: u64,
        gpu_written: bool,
    ) -> PooledBuffer {
        let class = size_class(bytes, max);
        let key = (usage, class);
        let mut st = lock(&self.state);
        let mut found = st.free.get_mut(&key).and_then(Vec::pop);
        if found.is_none() && gpu_written && st.open_recorders <= 1 {
            found = st.pending.get_mut(&key).and_then(Vec::pop);
        }
        let buffer = match found {
            Some(b) => {
                st.stats.reuses += 1;
                st.stats.idle_bytes -= class;
                b
            }
            None => {
                st.stats.allocations += 1;
                st.stats.allocated_bytes += class;
                drop(st);
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(match usage {
                        Usage::Storage => "tensor",
                        Usage::Uniform => "kernel params",
                        Usage::Staging => "readback",
                    }),
                    size: class,
                    usage: usage.wgpu(),
                    mapped_at_creation: false,
                })
            }
        };
        PooledBuffer {
            buffer,
            key,
            pool: Arc::downgrade(&self.state),
        }
    }

    /// The bind group for `key`, made by `make` unless cached.
    pub(crate) fn bind_group(
        &self,
        key: BindKey,
        make: impl FnOnce() -> wgpu::BindGroup,
    ) -> wgpu::BindGroup {
        let mut st = lock(&self.state);
        if let Some(g) = st.bind_groups.get(&key) {
            let g = g.clone();
            st.stats.bind_group_hits += 1;
            return g;
        }
        st.stats.bind_group_misses += 1;
        if st.bind_groups.len() >= BIND_GROUP_CAP {
            st.bind_groups.clear();
        }
        drop(st);
        let g = make();
        lock(&self.state).bind_groups.insert(key, g.clone());
        g
    }

    pub(crate) fn recorder_opened(&self) {
        lock(&self.state).open_recorders += 1;
    }

    /// A recorder submitted its work: if it is the only one open, everything released so
    /// far has no unsubmitted user left.
    pub(crate) fn recorder_submitted(&self) {
        let mut st = lock(&self.state);
        if st.open_recorders <= 1 {
            st.settle_pending();
        }
    }

    pub(crate) fn recorder_closed(&self) {
        let mut st = lock(&self.state);
        st.open_recorders = st.open_recorders.saturating_sub(1);
        if st.open_recorders == 0 {
            st.settle_pending();
        }
    }

    /// Frees every idle buffer (the next steps allocate again).
    pub fn trim(&self) {
        let mut st = lock(&self.state);
        st.free.clear();
        st.bind_groups.clear();
        st.stats.idle_bytes = st.pending.iter().map(|(k, v)| k.1 * v.len() as u64).sum();
    }
}

/// A pool buffer; back to the pool on drop.
pub(crate) struct PooledBuffer {
    pub(crate) buffer: wgpu::Buffer,
    key: (Usage, u64),
    pool: Weak<Mutex<PoolState>>,
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let Some(state) = self.pool.upgrade() else {
            return;
        };
        let mut st = lock(&state);
        if st.stats.idle_bytes + self.key.1 > IDLE_CAP {
            st.stats.freed += 1;
            // Cached bind groups may hold this buffer: let it go.
            st.bind_groups.clear();
            return;
        }
        st.stats.idle_bytes += self.key.1;
        let list = if st.open_recorders == 0 {
            &mut st.free
        } else {
            &mut st.pending
        };
        list.entry(self.key).or_default().push(self.buffer.clone());
    }
}

/// A row-major tensor on the GPU: `shape` (any rank; a scalar is `[]`), f32 or u32
/// elements, starting `offset` elements into a pooled buffer that views may share.
/// Cloning makes another handle to the same storage (no copy).
#[derive(Clone)]
pub struct GpuTensor {
    pub(crate) buf: Arc<PooledBuffer>,
    offset: usize,
    shape: Vec<usize>,
    dtype: DType,
}

impl GpuTensor {
    // Natively wgpu's handles are Send + Sync and so is the Arc; in the browser they are
    // not, and the page's GPU work runs on one thread.
    #[allow(clippy::arc_with_non_send_sync)]
    pub(crate) fn new(buf: PooledBuffer, shape: &[usize], dtype: DType) -> GpuTensor {
        GpuTensor {
            buf: Arc::new(buf),
            offset: 0,
            shape: shape.to_vec(),
            dtype,
        }
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dims(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Offset of element 0 in the buffer, in elements.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Rows when viewed as a matrix: the product of all dims but the last (1 for a scalar).
    pub fn rows(&self) -> usize {
        match self.shape.split_last() {
            Some((_, lead)) => lead.iter().product(),
            None => 1,
        }
    }

    /// The last dim (1 for a scalar).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// `(rows, cols)`: the tensor viewed as a matrix.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows(), self.cols())
    }

    /// The same values under another shape of the same size.
    pub fn reshape(&self, shape: &[usize]) -> Result<GpuTensor> {
        let n: usize = shape.iter().product();
        if n != self.len() {
            return Err(LabError::invalid(format!(
                "cannot view a tensor of shape {:?} ({} values) as {shape:?} ({n} values)",
                self.shape,
                self.len()
            )));
        }
        Ok(GpuTensor {
            shape: shape.to_vec(),
            ..self.clone()
        })
    }

    /// Elements `start..start + len(shape)` of this tensor as a tensor of `shape`, sharing
    /// the storage. Kernels that bind a view need its byte offset to be a multiple of the
    /// device's storage offset alignment (256 bytes on most); `zero`, `copy` and `accumulate`
    /// take any offset.
    pub fn view(&self, start: usize, shape: &[usize]) -> Result<GpuTensor> {
        let n: usize = shape.iter().product();
        if start.checked_add(n).is_none_or(|end| end > self.len()) {
            return Err(LabError::invalid(format!(
                "a view of {n} values at {start} does not fit in a tensor of {} values",
                self.len()
            )));
        }
        Ok(GpuTensor {
            buf: self.buf.clone(),
            offset: self.offset + start,
            shape: shape.to_vec(),
            dtype: self.dtype,
        })
    }

    /// Rows `r0..r1` of the tensor viewed as a matrix.
    pub fn rows_view(&self, r0: usize, r1: usize) -> Result<GpuTensor> {
        if r0 > r1 || r1 > self.rows() {
            return Err(LabError::invalid(format!(
                "rows {r0}..{r1} of a tensor with {} rows",
                self.rows()
            )));
        }
        self.view(r0 * self.cols(), &[r1 - r0, self.cols()])
    }

    /// True when both are views of one buffer (kernels may not write one while reading the
    /// other in a single dispatch).
    pub fn shares_storage(&self, other: &GpuTensor) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }

    /// The whole buffer behind this tensor as one flat tensor of `elems` values at offset 0.
    pub(crate) fn whole_buffer(&self, elems: usize) -> GpuTensor {
        GpuTensor {
            buf: self.buf.clone(),
            offset: 0,
            shape: vec![elems],
            dtype: self.dtype,
        }
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.buf.buffer
    }

    /// Byte range the tensor spans (at least 4 bytes: WebGPU has no empty bindings).
    pub(crate) fn byte_range(&self) -> (u64, u64) {
        (self.offset as u64 * 4, self.len().max(1) as u64 * 4)
    }
}

impl std::fmt::Debug for GpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuTensor")
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .field("offset", &self.offset)
            .finish()
    }
}

/// The pre-pool name: a tensor viewed as `[rows, cols]`.
pub type GpuMatrix = GpuTensor;

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_waste_at_most_a_quarter() {
        for b in [
            1u64,
            4,
            5,
            16,
            17,
            100,
            1000,
            4097,
            1 << 20,
            (1 << 20) + 1,
            3_000_001,
        ] {
            let c = size_class(b, u64::MAX);
            assert!(c >= b && c.is_multiple_of(4), "{b} -> {c}");
            assert!(c as f64 <= (b.max(16) as f64) * 1.25 + 4.0, "{b} -> {c}");
        }
        assert_eq!(size_class(1000, 1000), 1000);
        assert_eq!(size_class(1001, 1004), 1004);
    }
}
