//! The one way work reaches the GPU: a `Recorder` records any number of kernel dispatches
//! into one command encoder and submits them together when results are read back (`read`,
//! `read_many`) or when asked (`flush`, `finish`). Every kernel wrapper, in any module,
//! records through it: the forward kernels (`forward`), the reductions (`gpu`), Wanda's
//! selection (`select`) and the buffer ops below (`zero`, `copy`, `accumulate`).
//!
//! Memory: outputs, readback staging and kernel parameters all come from the context's
//! `BufferPool`, so a step that repeats the last one's shapes allocates nothing. The
//! parameters of all dispatches of one submission share a uniform arena (one pooled buffer
//! per 16 KiB of parameters, written once at the submission) instead of one buffer each, and
//! a dispatch that binds the same buffers at the same offsets as an earlier one (the next
//! step's, the next chunk's) reuses its bind group.
//!
//! Errors: the recorder holds an out-of-memory and a validation error scope open between
//! submissions, so a bad dispatch or a lost device comes back from the next submission as
//! `LabError::GpuFailed`, never a panic, and `Backend` can finish the run on the CPU.
//!
//! A training step records its forward and backward passes, its optimizer update and the
//! loss and per-layer norms it wants into one recorder, then `read_many`s those few small
//! tensors: one submission, one readback; parameters, gradients, optimizer state and
//! activations stay in pool buffers from step to step.

use bytemuck::{Pod, Zeroable};

use super::gpu::{GpuContext, Shader};
use super::pool::{DType, GpuTensor, PooledBuffer, Usage};
use super::Matrix;
use crate::{LabError, Result};

pub const BUFFER_OPS: Shader = Shader {
    name: "buffer_ops.wgsl",
    source: include_str!("../../shaders/buffer_ops.wgsl"),
};

/// Bytes of one uniform arena buffer.
const ARENA_BYTES: u64 = 16 << 10;
/// Invocations per workgroup of the buffer ops (`WG` in buffer_ops.wgsl).
const WG: usize = 256;
/// Most workgroups along one dispatch dimension (WebGPU's default limit).
const MAX_GROUPS: usize = 65535;

/// One binding of a dispatch, at @binding(i) for its place in the list.
#[derive(Clone, Copy)]
pub enum Arg<'t> {
    Tensor(&'t GpuTensor),
    /// The dispatch's parameter block (a uniform).
    Params,
}

/// Workgroups for `n` work items of `per` each, as a 2-D grid when one dimension is not
/// enough: the kernels compute item = (wid.y * nwg.x + wid.x) * per + lid.
pub(crate) fn flat_grid(n: usize, per: usize) -> Result<[u32; 3]> {
    let groups = n.div_ceil(per).max(1);
    let x = groups.min(MAX_GROUPS);
    let y = groups.div_ceil(x);
    if y > MAX_GROUPS {
        return Err(LabError::invalid(format!(
            "{n} work items are too many for one dispatch"
        )));
    }
    Ok([x as u32, y as u32, 1])
}

pub(crate) fn as_u32(what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| {
        LabError::invalid(format!(
            "{what}: {n} is beyond what a GPU kernel indexes (u32)"
        ))
    })
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct FillParams {
    len: u32,
    offset: u32,
    value: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CopyParams {
    rows: u32,
    cols: u32,
    src_offset: u32,
    src_stride: u32,
    dst_offset: u32,
    dst_stride: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AccumulateParams {
    len: u32,
    dst_offset: u32,
    src_offset: u32,
    scale: f32,
}

/// What one recorder did, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecorderStats {
    pub dispatches: u64,
    pub submissions: u64,
    pub readbacks: u64,
}

/// Kernels recorded into one command buffer, submitted when a result is read back.
pub struct Recorder<'a> {
    ctx: &'a GpuContext,
    encoder: wgpu::CommandEncoder,
    /// [out of memory, validation], pushed in that order, popped in reverse.
    scopes: Vec<wgpu::ErrorScopeGuard>,
    /// Parameter blocks of this submission: (buffer, bytes written so far).
    arena: Vec<(PooledBuffer, Vec<u8>)>,
    /// Bound where a kernel's optional input (a bias) is absent.
    dummy: Option<GpuTensor>,
    stats: RecorderStats,
}

impl<'a> Recorder<'a> {
    pub fn new(ctx: &'a GpuContext) -> Result<Self> {
        ctx.check()?;
        let scopes = Self::push_scopes(ctx);
        ctx.pool().recorder_opened();
        Ok(Recorder {
            ctx,
            encoder: ctx.device.create_command_encoder(&Default::default()),
            scopes,
            arena: Vec::new(),
            dummy: None,
            stats: RecorderStats::default(),
        })
    }

    fn push_scopes(ctx: &GpuContext) -> Vec<wgpu::ErrorScopeGuard> {
        vec![
            ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory),
            ctx.device.push_error_scope(wgpu::ErrorFilter::Validation),
        ]
    }

    pub fn context(&self) -> &'a GpuContext {
        self.ctx
    }

    pub fn stats(&self) -> RecorderStats {
        self.stats
    }

    /// Copies `m` to the GPU as a `[rows, cols]` tensor.
    pub fn upload(&mut self, m: Matrix) -> Result<GpuTensor> {
        self.ctx.upload(m)
    }

    /// Copies f32 values to the GPU as a tensor of `shape`.
    pub fn upload_f32(&mut self, values: &[f32], shape: &[usize]) -> Result<GpuTensor> {
        self.ctx.upload_values(values, shape, DType::F32)
    }

    /// Copies u32 values (token ids, indices) to the GPU as a tensor of `shape`.
    pub fn upload_u32(&mut self, values: &[u32], shape: &[usize]) -> Result<GpuTensor> {
        self.ctx.upload_values(values, shape, DType::U32)
    }

    /// A pool tensor of `shape` for a kernel recorded next to write. Its contents are
    /// whatever its buffer last held: every kernel writes all of its output, and one that
    /// accumulates starts from `zero`.
    pub fn output(&mut self, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        self.ctx.check()?;
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                LabError::invalid(format!("a tensor of shape {shape:?} is too large"))
            })?;
        let bytes = n as u64 * 4;
        let limit = self.ctx.max_binding_elements() as u64 * 4;
        if bytes > limit {
            return Err(LabError::invalid(format!(
                "a tensor of shape {shape:?} ({bytes} bytes) exceeds this GPU's storage \
                 binding limit of {limit} bytes"
            )));
        }
        let buf = self
            .ctx
            .pool()
            .take(&self.ctx.device, Usage::Storage, bytes, limit, true);
        Ok(GpuTensor::new(buf, shape, dtype))
    }

    /// A `zero`ed pool tensor of `shape`.
    pub fn zeros(&mut self, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        let t = self.output(shape, dtype)?;
        self.zero(&t)?;
        Ok(t)
    }

    /// A one-value tensor to bind where a kernel's optional input is absent.
    pub(crate) fn dummy(&mut self) -> Result<GpuTensor> {
        if let Some(d) = &self.dummy {
            return Ok(d.clone());
        }
        let d = self.zeros(&[1], DType::F32)?;
        self.dummy = Some(d.clone());
        Ok(d)
    }

    /// Places `params` in the uniform arena: (buffer, offset, size).
    fn place_params<P: Pod>(&mut self, params: &P) -> (wgpu::Buffer, u64, u64) {
        let bytes = bytemuck::bytes_of(params);
        let align = self.ctx.device.limits().min_uniform_buffer_offset_alignment as usize;
        let fits = |used: &Vec<u8>| used.len().next_multiple_of(align) + bytes.len();
        let need_new = match self.arena.last() {
            Some((_, used)) => fits(used) as u64 > ARENA_BYTES,
            None => true,
        };
        if need_new {
            let buf = self.ctx.pool().take(
                &self.ctx.device,
                Usage::Uniform,
                ARENA_BYTES,
                ARENA_BYTES,
                false,
            );
            self.arena.push((buf, Vec::new()));
        }
        let (buf, used) = self
            .arena
            .last_mut()
            .expect("an arena buffer was just pushed");
        let offset = used.len().next_multiple_of(align);
        used.resize(offset, 0);
        used.extend_from_slice(bytes);
        (buf.buffer.clone(), offset as u64, bytes.len() as u64)
    }

    /// Records one dispatch of `entry` with `args` at @binding(0..), `params` where
    /// `Arg::Params` stands.
    pub fn dispatch_args<P: Pod>(
        &mut self,
        shader: &Shader,
        entry: &'static str,
        args: &[Arg],
        params: &P,
        groups: [u32; 3],
    ) -> Result<()> {
        self.ctx.check()?;
        let pipeline = self.ctx.pipeline(shader, entry)?;
        let (pbuf, poff, psize) = self.place_params(params);
        let align = self.ctx.device.limits().min_storage_buffer_offset_alignment as u64;
        let mut bound = Vec::with_capacity(args.len());
        for a in args {
            bound.push(match a {
                Arg::Tensor(t) => {
                    let (off, size) = t.byte_range();
                    if off % align != 0 {
                        return Err(LabError::invalid(format!(
                            "{entry}: a view at byte {off} cannot be bound (this GPU binds \
                             storage at multiples of {align} bytes); copy it out first"
                        )));
                    }
                    (t.buffer().clone(), off, size)
                }
                Arg::Params => (pbuf.clone(), poff, psize),
            });
        }
        let device = &self.ctx.device;
        let bind_group = self
            .ctx
            .pool()
            .bind_group((pipeline.clone(), bound.clone()), || {
                let entries: Vec<wgpu::BindGroupEntry> = bound
                    .iter()
                    .enumerate()
                    .map(|(i, (buffer, offset, size))| wgpu::BindGroupEntry {
                        binding: i as u32,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer,
                            offset: *offset,
                            size: std::num::NonZeroU64::new(*size),
                        }),
                    })
                    .collect();
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(entry),
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &entries,
                })
            });
        let mut pass = self
            .encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(entry),
                timestamp_writes: None,
            });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        self.stats.dispatches += 1;
        Ok(())
    }

    /// Records one dispatch of `entry` with `tensors` at @binding(0..) and `params` last.
    pub fn dispatch<P: Pod>(
        &mut self,
        shader: &Shader,
        entry: &'static str,
        tensors: &[&GpuTensor],
        params: &P,
        groups: [u32; 3],
    ) -> Result<()> {
        let args: Vec<Arg> = tensors
            .iter()
            .copied()
            .map(Arg::Tensor)
            .chain(std::iter::once(Arg::Params))
            .collect();
        self.dispatch_args(shader, entry, &args, params, groups)
    }

    /// Sets every element of `t` to 0 (0.0 and 0u32 are the same bits). Kernel:
    /// buffer_ops.wgsl `fill`.
    pub fn zero(&mut self, t: &GpuTensor) -> Result<()> {
        self.fill_bits(t, 0)
    }

    /// Sets every element of an f32 tensor to `value`.
    pub fn fill(&mut self, t: &GpuTensor, value: f32) -> Result<()> {
        self.fill_bits(t, value.to_bits())
    }

    fn fill_bits(&mut self, t: &GpuTensor, bits: u32) -> Result<()> {
        if t.is_empty() {
            return Ok(());
        }
        let p = FillParams {
            len: as_u32("fill", t.len())?,
            offset: as_u32("fill offset", t.offset())?,
            value: bits,
            _pad: 0,
        };
        let buffer = whole(t);
        let groups = flat_grid(t.len(), WG)?;
        self.dispatch(&BUFFER_OPS, "fill", &[&buffer], &p, groups)
    }

    /// dst = src, element for element (same number of values; shapes may differ). Kernel:
    /// buffer_ops.wgsl `copy_rows`.
    pub fn copy(&mut self, src: &GpuTensor, dst: &GpuTensor) -> Result<()> {
        if src.len() != dst.len() {
            return Err(LabError::invalid(format!(
                "copy: {} values into {}",
                src.len(),
                dst.len()
            )));
        }
        self.copy_rows(src, 0, src.len(), dst, 0, dst.len(), 1, src.len())
    }

    /// A strided 2-D copy: for r < rows, c < cols,
    /// dst[dst_start + r dst_stride + c] = src[src_start + r src_stride + c], indices in
    /// elements of each tensor (e.g. the last token's hidden state of every window:
    /// src_start (T-1) C, src_stride T C, cols C).
    #[allow(clippy::too_many_arguments)]
    pub fn copy_rows(
        &mut self,
        src: &GpuTensor,
        src_start: usize,
        src_stride: usize,
        dst: &GpuTensor,
        dst_start: usize,
        dst_stride: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let last = |start: usize, stride: usize| start + (rows - 1) * stride + cols;
        if last(src_start, src_stride) > src.len() || last(dst_start, dst_stride) > dst.len() {
            return Err(LabError::invalid(format!(
                "copy: {rows} rows of {cols} at {src_start} (stride {src_stride}) from {} \
                 values into {} values at {dst_start} (stride {dst_stride}) overrun a tensor",
                src.len(),
                dst.len()
            )));
        }
        if src.shares_storage(dst) {
            return Err(LabError::invalid(
                "copy: source and destination share one buffer; copy through a new tensor",
            ));
        }
        let p = CopyParams {
            rows: as_u32("copy rows", rows)?,
            cols: as_u32("copy cols", cols)?,
            src_offset: as_u32("copy offset", src.offset() + src_start)?,
            src_stride: as_u32("copy stride", src_stride)?,
            dst_offset: as_u32("copy offset", dst.offset() + dst_start)?,
            dst_stride: as_u32("copy stride", dst_stride)?,
            _pad: [0; 2],
        };
        as_u32("copy values", rows * cols)?;
        let groups = flat_grid(rows * cols, WG)?;
        self.dispatch(
            &BUFFER_OPS,
            "copy_rows",
            &[&whole(src), &whole(dst)],
            &p,
            groups,
        )
    }

    /// acc += scale b, elementwise (gradient accumulation; scale 1 is acc += b exactly).
    /// Kernel: buffer_ops.wgsl `accumulate`.
    pub fn accumulate(&mut self, acc: &GpuTensor, b: &GpuTensor, scale: f32) -> Result<()> {
        if acc.len() != b.len() {
            return Err(LabError::invalid(format!(
                "accumulate: {} values into {}",
                b.len(),
                acc.len()
            )));
        }
        if acc.dtype() != DType::F32 || b.dtype() != DType::F32 {
            return Err(LabError::invalid("accumulate: both tensors must be f32"));
        }
        if acc.shares_storage(b) {
            return Err(LabError::invalid(
                "accumulate: the tensors share one buffer; scale in place instead",
            ));
        }
        if acc.is_empty() {
            return Ok(());
        }
        let p = AccumulateParams {
            len: as_u32("accumulate", acc.len())?,
            dst_offset: as_u32("accumulate offset", acc.offset())?,
            src_offset: as_u32("accumulate offset", b.offset())?,
            scale,
        };
        let groups = flat_grid(acc.len(), WG)?;
        self.dispatch(
            &BUFFER_OPS,
            "accumulate",
            &[&whole(acc), &whole(b)],
            &p,
            groups,
        )
    }

    /// Submits what was recorded and reports errors raised since the last submission; the
    /// scopes are opened again for what follows.
    async fn submit(&mut self) -> Result<()> {
        let encoder = std::mem::replace(
            &mut self.encoder,
            self.ctx.device.create_command_encoder(&Default::default()),
        );
        // The parameters are written now: `write_buffer` lands before this submission's
        // commands.
        for (buf, bytes) in &self.arena {
            if !bytes.is_empty() {
                self.ctx.queue.write_buffer(&buf.buffer, 0, bytes);
            }
        }
        self.ctx.queue.submit([encoder.finish()]);
        self.stats.submissions += 1;
        // Back to the pool; free for reuse once the pool knows this submission is in.
        self.arena.clear();
        self.ctx.pool().recorder_submitted();
        let validation = self.scopes.pop();
        let oom = self.scopes.pop();
        let mut failure = None;
        if let Some(e) = match validation {
            Some(s) => s.pop().await,
            None => None,
        } {
            failure = Some(LabError::GpuFailed(e.to_string()));
        }
        if let Some(e) = match oom {
            Some(s) => s.pop().await,
            None => None,
        } {
            failure.get_or_insert(LabError::GpuFailed(format!("out of GPU memory: {e}")));
        }
        if let Some(f) = failure {
            // A lost device makes every later call invalid; say so rather than quote the
            // first validation error it caused. (Natively the loss is only reported from a
            // poll; in the browser, by the event loop.)
            #[cfg(not(target_arch = "wasm32"))]
            let _ = self.ctx.device.poll(wgpu::PollType::Poll);
            self.ctx.check()?;
            return Err(f);
        }
        self.ctx.check()?;
        self.scopes = Self::push_scopes(self.ctx);
        Ok(())
    }

    /// Submits everything recorded so far without reading anything back, and reports any
    /// error it raised. Buffers released before it become free for uploads.
    pub async fn flush(&mut self) -> Result<()> {
        self.submit().await
    }

    /// Runs everything recorded so far and reads `t` back (f32 values).
    pub async fn read(&mut self, t: &GpuTensor) -> Result<Vec<f32>> {
        Ok(self.read_many(&[t]).await?.pop().unwrap_or_default())
    }

    /// Runs everything recorded so far and reads back the chosen tensors only, in one
    /// submission and one mapping (f32 values; see `read_u32` and `read_records`).
    pub async fn read_many(&mut self, tensors: &[&GpuTensor]) -> Result<Vec<Vec<f32>>> {
        let words = self.read_words(tensors).await?;
        Ok(words
            .into_iter()
            .map(|w| bytemuck::cast_slice::<u32, f32>(&w).to_vec())
            .collect())
    }

    /// Runs everything recorded so far and reads `t` back as u32 values.
    pub async fn read_u32(&mut self, t: &GpuTensor) -> Result<Vec<u32>> {
        Ok(self.read_words(&[t]).await?.pop().unwrap_or_default())
    }

    /// Runs everything recorded so far and reads the first `count` records of `T` (a
    /// kernel's partial results) back from `t`.
    pub async fn read_records<T: Pod>(&mut self, t: &GpuTensor, count: usize) -> Result<Vec<T>> {
        let words = self.read_words(&[t]).await?.pop().unwrap_or_default();
        let bytes: &[u8] = bytemuck::cast_slice(&words);
        let want = count * std::mem::size_of::<T>();
        if bytes.len() < want {
            return Err(LabError::invalid(format!(
                "{count} records of {} bytes do not fit in a tensor of {} bytes",
                std::mem::size_of::<T>(),
                bytes.len()
            )));
        }
        Ok(bytemuck::pod_collect_to_vec(&bytes[..want]))
    }

    async fn read_words(&mut self, tensors: &[&GpuTensor]) -> Result<Vec<Vec<u32>>> {
        self.ctx.check()?;
        let total: u64 = tensors.iter().map(|t| t.len() as u64 * 4).sum();
        let staging = self.ctx.pool().take(
            &self.ctx.device,
            Usage::Staging,
            total.max(4),
            u64::MAX,
            true,
        );
        let mut at = 0u64;
        for t in tensors {
            let (off, _) = t.byte_range();
            let bytes = t.len() as u64 * 4;
            if bytes > 0 {
                self.encoder
                    .copy_buffer_to_buffer(t.buffer(), off, &staging.buffer, at, bytes);
            }
            at += bytes;
        }
        self.submit().await?;
        let words: Vec<u32> = self.ctx.read_mapped(&staging.buffer).await?;
        self.stats.readbacks += 1;
        let mut out = Vec::with_capacity(tensors.len());
        let mut at = 0usize;
        for t in tensors {
            out.push(words[at..at + t.len()].to_vec());
            at += t.len();
        }
        Ok(out)
    }

    /// Runs everything recorded and reports any error it raised.
    pub async fn finish(mut self) -> Result<()> {
        self.submit().await
    }
}

/// The whole buffer behind `t`, for the buffer ops, which take element offsets themselves
/// (so they serve views at any offset).
fn whole(t: &GpuTensor) -> GpuTensor {
    let elems = (t.buffer().size() / 4) as usize;
    // A view of the full buffer: offset 0, every element.
    t.whole_buffer(elems)
}

impl Drop for Recorder<'_> {
    /// wgpu requires error scopes to be closed in reverse order (it panics otherwise); a
    /// `Vec` would drop them front to back.
    fn drop(&mut self) {
        while let Some(scope) = self.scopes.pop() {
            drop(scope);
        }
        self.arena.clear();
        self.ctx.pool().recorder_closed();
    }
}
