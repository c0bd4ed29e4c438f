//! The wgpu context and the GPU side of every kernel.
//!
//! One `GpuContext` per page or process: it owns the device and queue, compiles each WGSL
//! entry point once (pipeline cache), and offers upload and readback helpers. The same code
//! runs on WebGPU in the browser and on Vulkan natively (Mesa's lavapipe in CI).
//!
//! Failure is data, not a panic: uncaptured errors and device loss are recorded in `Health`
//! and every call reports them as `LabError::GpuFailed`, so `Backend` can finish the run on
//! the CPU.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytemuck::{Pod, Zeroable};

use super::pool::{BufferPool, DType, Usage};
pub use super::pool::{GpuMatrix, GpuTensor, PoolStats};
use super::recorder::{Arg, Recorder};
use super::{Bins, Central, Matrix, Moments};
use crate::{LabError, Result};

/// A WGSL file from `shaders/`, compiled into the binary.
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

pub const MOMENTS: Shader = Shader {
    name: "moments.wgsl",
    source: include_str!("../../shaders/moments.wgsl"),
};
pub const CENTRAL: Shader = Shader {
    name: "central.wgsl",
    source: include_str!("../../shaders/central.wgsl"),
};
pub const HISTOGRAM: Shader = Shader {
    name: "histogram.wgsl",
    source: include_str!("../../shaders/histogram.wgsl"),
};

/// Invocations per workgroup of the per-tensor kernels (`WG` in the shaders).
const WG: u32 = 256;
/// Invocations per workgroup of the per-column kernels (one column each).
const COL_WG: u32 = 64;
/// Upper bound on workgroups for the grid-stride kernels: enough to fill any GPU, few
/// enough that the partials are a small readback.
const MAX_GROUPS: u32 = 1024;
/// Rows one per-column invocation folds; ~256 keeps f32 partials accurate.
const ROWS_PER_GROUP: u32 = 256;

#[derive(Default)]
struct Health {
    lost: Mutex<Option<String>>,
    errors: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Device, queue and compiled pipelines. Cloning is cheap (handles are reference-counted).
#[derive(Clone)]
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    max_binding_bytes: u64,
    modules: Arc<Mutex<HashMap<&'static str, wgpu::ShaderModule>>>,
    pipelines: Arc<Mutex<HashMap<(&'static str, &'static str), wgpu::ComputePipeline>>>,
    health: Arc<Health>,
    pool: BufferPool,
}

/// Shader-side parameter block shared by all reduction kernels (see the WGSL `Params`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    len: u32,
    rows: u32,
    cols: u32,
    rows_per_group: u32,
    a: f32,     // central: mean; histogram: lo
    b: f32,     // central: threshold; histogram: scale
    c: u32,     // histogram: bins
    col0: u32,  // column_histogram: first column of the slice
    ncols: u32, // column_histogram: columns in the slice
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MomentsPartial {
    sum: f32,
    sum_sq: f32,
    sum_abs: f32,
    min: f32,
    max: f32,
    _pad: [f32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CentralPartial {
    m2: f32,
    m4: f32,
    above: u32,
    _pad: u32,
}

impl GpuContext {
    /// Brings up an adapter and device: Vulkan natively, WebGPU in the browser.
    pub async fn new() -> Result<Self> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = if cfg!(target_arch = "wasm32") {
            wgpu::Backends::BROWSER_WEBGPU
        } else {
            wgpu::Backends::VULKAN
        };
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                LabError::GpuUnavailable(if cfg!(target_arch = "wasm32") {
                    "the browser has WebGPU but offered no adapter (requestAdapter() gave null)"
                        .into()
                } else {
                    format!(
                        "no GPU adapter was found: no Vulkan driver answered; on Debian install \
                         mesa-vulkan-drivers (lavapipe) ({e})"
                    )
                })
            })?;
        let info = adapter.get_info();
        let have = adapter.limits();
        // WebGPU's defaults, plus bigger storage bindings where the adapter has them, so a
        // whole weight matrix fits one binding; if refused, the plain defaults.
        let raised = wgpu::Limits {
            max_storage_buffer_binding_size: have.max_storage_buffer_binding_size.min(1 << 30),
            max_buffer_size: have.max_buffer_size.min(1 << 30),
            ..Default::default()
        };
        let mut last_err = String::new();
        let mut got = None;
        for limits in [
            raised,
            wgpu::Limits::default(),
            wgpu::Limits::downlevel_defaults(),
        ] {
            let d = wgpu::DeviceDescriptor {
                label: Some("layerlab"),
                required_limits: limits,
                ..Default::default()
            };
            match adapter.request_device(&d).await {
                Ok(pair) => {
                    got = Some(pair);
                    break;
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        let (device, queue) = got.ok_or_else(|| {
            LabError::GpuUnavailable(format!(
                "the GPU adapter {} refused a device: {last_err}",
                info.name
            ))
        })?;
        let health = Arc::new(Health::default());
        let h = health.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *lock(&h.lost) = Some(format!("{msg} ({reason:?})"));
        });
        let h = health.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            lock(&h.errors).push(e.to_string());
        }));
        let max_binding_bytes = device.limits().max_storage_buffer_binding_size;
        Ok(GpuContext {
            device,
            queue,
            info,
            max_binding_bytes,
            modules: Default::default(),
            pipelines: Default::default(),
            health,
            pool: BufferPool::default(),
        })
    }

    /// "SwiftShader Device (Subzero) (WebGPU)", "llvmpipe (LLVM 15.0.7, 256 bits) (Vulkan)".
    pub fn describe(&self) -> String {
        let api = match self.info.backend {
            wgpu::Backend::BrowserWebGpu => "WebGPU".to_string(),
            other => other.to_string(),
        };
        let name = if self.info.name.is_empty() {
            "unnamed adapter"
        } else {
            &self.info.name
        };
        format!("{name} ({api})")
    }

    /// Names an adapter the API left unnamed (browsers hide WebGPU's description; the page
    /// passes vendor and architecture instead).
    pub fn name_if_unnamed(&mut self, name: &str) {
        if self.info.name.is_empty() && !name.is_empty() {
            self.info.name = name.to_string();
        }
    }

    /// True for an adapter that emulates a GPU on the CPU (Mesa's lavapipe, SwiftShader).
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// Largest number of f32 values one storage binding may hold on this device.
    pub fn max_binding_elements(&self) -> usize {
        (self.max_binding_bytes / 4) as usize
    }

    /// Destroys the device, as a driver reset would; later calls fail with `GpuFailed`.
    /// The page uses it to show that a run survives losing the GPU.
    pub fn destroy(&self) {
        self.device.destroy();
    }

    /// Reports device loss or any error the device raised since the last check.
    pub fn check(&self) -> Result<()> {
        if let Some(msg) = lock(&self.health.lost).clone() {
            return Err(LabError::GpuFailed(format!(
                "the GPU device was lost: {msg}"
            )));
        }
        let errors = std::mem::take(&mut *lock(&self.health.errors));
        if !errors.is_empty() {
            return Err(LabError::GpuFailed(errors.join("; ")));
        }
        Ok(())
    }

    /// The compiled pipeline for one entry point of a shader, compiled on first use.
    pub(crate) fn pipeline(
        &self,
        shader: &Shader,
        entry: &'static str,
    ) -> Result<wgpu::ComputePipeline> {
        if let Some(p) = lock(&self.pipelines).get(&(shader.name, entry)) {
            return Ok(p.clone());
        }
        let module = lock(&self.modules)
            .entry(shader.name)
            .or_insert_with(|| {
                self.device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(shader.name),
                        source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(shader.source)),
                    })
            })
            .clone();
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        self.check()?;
        lock(&self.pipelines).insert((shader.name, entry), pipeline.clone());
        Ok(pipeline)
    }

    /// The pool every tensor, parameter block and readback buffer of this context comes
    /// from.
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// Allocations against reuses of this context's buffer pool.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Copies a chunk of a tensor into a pooled storage buffer, as `[rows, cols]`.
    pub fn upload(&self, m: Matrix) -> Result<GpuTensor> {
        self.upload_values(m.data, &[m.rows, m.cols], DType::F32)
    }

    /// Copies `values` (f32 or u32) into a pooled storage buffer as a tensor of `shape`.
    pub fn upload_values<T: Pod>(
        &self,
        values: &[T],
        shape: &[usize],
        dtype: DType,
    ) -> Result<GpuTensor> {
        debug_assert_eq!(std::mem::size_of::<T>(), 4);
        let n: usize = shape.iter().product();
        if n != values.len() {
            return Err(LabError::invalid(format!(
                "a tensor of shape {shape:?} needs {n} values, found {}",
                values.len()
            )));
        }
        let bytes = std::mem::size_of_val(values) as u64;
        if bytes > self.max_binding_bytes {
            return Err(LabError::invalid(format!(
                "a chunk of {bytes} bytes exceeds this GPU's storage binding limit of {} bytes",
                self.max_binding_bytes
            )));
        }
        self.check()?;
        // A host write: only a buffer whose users have all been submitted (see `pool`).
        let buf = self.pool.take(
            &self.device,
            Usage::Storage,
            bytes,
            self.max_binding_bytes,
            false,
        );
        if bytes > 0 {
            self.queue
                .write_buffer(&buf.buffer, 0, bytemuck::cast_slice(values));
        }
        Ok(GpuTensor::new(buf, shape, dtype))
    }

    /// Runs one reduction kernel, bound as [m, out, params, extra], through a recorder of
    /// its own, and reads `count` records of `T` back from `out` (zero-filled first when
    /// `zeroed`: kernels that add into it with atomics).
    #[allow(clippy::too_many_arguments)]
    async fn reduce<T: Pod, P: Pod>(
        &self,
        shader: &Shader,
        entry: &'static str,
        m: &GpuTensor,
        extra: Option<&GpuTensor>,
        params: &P,
        groups: (u32, u32),
        count: usize,
        zeroed: bool,
    ) -> Result<Vec<T>> {
        let mut rec = Recorder::new(self)?;
        let words = (count.max(1) * std::mem::size_of::<T>()).div_ceil(4);
        let out = if zeroed {
            rec.zeros(&[words], DType::U32)?
        } else {
            rec.output(&[words], DType::U32)?
        };
        let mut args = vec![Arg::Tensor(m), Arg::Tensor(&out), Arg::Params];
        if let Some(e) = extra {
            args.push(Arg::Tensor(e));
        }
        rec.dispatch_args(shader, entry, &args, params, [groups.0, groups.1, 1])?;
        // The read submits and checks the error scopes; nothing is recorded after it.
        rec.read_records(&out, count).await
    }

    pub(crate) async fn read_mapped<T: Pod>(&self, staging: &wgpu::Buffer) -> Result<Vec<T>> {
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        // Natively the map completes inside poll; in the browser the event loop does it.
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| LabError::GpuFailed(format!("waiting for the GPU failed: {e}")))?;
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.check()?;
                return Err(LabError::GpuFailed(format!(
                    "reading results back failed: {e}"
                )));
            }
            Err(_) => {
                self.check()?;
                return Err(LabError::GpuFailed("the GPU dropped a readback".into()));
            }
        }
        let values = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| LabError::GpuFailed(format!("reading results back failed: {e}")))?;
            bytemuck::pod_collect_to_vec::<u8, T>(&view)
        };
        staging.unmap();
        self.check()?;
        Ok(values)
    }

    fn grid_groups(len: usize) -> u32 {
        (len.div_ceil(WG as usize) as u32).clamp(1, MAX_GROUPS)
    }

    fn column_grid(m: &GpuMatrix) -> Result<(u32, u32)> {
        let x = m.cols().div_ceil(COL_WG as usize);
        let y = m.rows().div_ceil(ROWS_PER_GROUP as usize);
        if x > 65535 || y > 65535 {
            return Err(LabError::invalid(format!(
                "a [{}, {}] chunk is too large for one per-column dispatch",
                m.rows(),
                m.cols()
            )));
        }
        Ok((x.max(1) as u32, y.max(1) as u32))
    }

    fn params(m: &GpuMatrix, a: f32, b: f32, c: u32) -> Params {
        Params {
            len: m.len() as u32,
            rows: m.rows() as u32,
            cols: m.cols() as u32,
            rows_per_group: ROWS_PER_GROUP,
            a,
            b,
            c,
            col0: 0,
            ncols: m.cols() as u32,
            _pad: [0; 3],
        }
    }

    /// GPU twin of `cpu::tensor_moments`.
    pub async fn tensor_moments(&self, m: &GpuMatrix) -> Result<Moments> {
        let groups = Self::grid_groups(m.len());
        let parts: Vec<MomentsPartial> = self
            .reduce(
                &MOMENTS,
                "tensor_moments",
                m,
                None,
                &Self::params(m, 0.0, 0.0, 0),
                (groups, 1),
                groups as usize,
                false,
            )
            .await?;
        let mut acc = Moments::EMPTY;
        for p in &parts {
            acc.merge(&moments_of(p, 0));
        }
        acc.count = m.len() as u64;
        Ok(acc)
    }

    /// GPU twin of `cpu::column_moments`.
    pub async fn column_moments(&self, m: &GpuMatrix) -> Result<Vec<Moments>> {
        let (gx, gy) = Self::column_grid(m)?;
        let count = gy as usize * m.cols();
        let parts: Vec<MomentsPartial> = self
            .reduce(
                &MOMENTS,
                "column_moments",
                m,
                None,
                &Self::params(m, 0.0, 0.0, 0),
                (gx, gy),
                count,
                false,
            )
            .await?;
        let mut cols = vec![Moments::EMPTY; m.cols()];
        for (i, p) in parts.iter().enumerate() {
            cols[i % m.cols().max(1)].merge(&moments_of(p, 0));
        }
        for c in &mut cols {
            c.count = m.rows() as u64;
        }
        Ok(cols)
    }

    /// GPU twin of `cpu::tensor_central`.
    pub async fn tensor_central(
        &self,
        m: &GpuMatrix,
        mean: f32,
        threshold: f32,
    ) -> Result<Central> {
        let groups = Self::grid_groups(m.len());
        let parts: Vec<CentralPartial> = self
            .reduce(
                &CENTRAL,
                "tensor_central",
                m,
                None,
                &Self::params(m, mean, threshold, 0),
                (groups, 1),
                groups as usize,
                false,
            )
            .await?;
        let mut acc = Central::default();
        for p in &parts {
            acc.merge(&central_of(p));
        }
        Ok(acc)
    }

    /// GPU twin of `cpu::column_central`; `centre[c] = (mean, threshold)`.
    pub async fn column_central(&self, m: &GpuMatrix, centre: &[[f32; 2]]) -> Result<Vec<Central>> {
        if centre.len() != m.cols() {
            return Err(LabError::invalid(format!(
                "column_central needs {} centres, found {}",
                m.cols(),
                centre.len()
            )));
        }
        let (gx, gy) = Self::column_grid(m)?;
        let flat: Vec<f32> = centre.iter().flatten().copied().collect();
        let centres = self.upload_values(&flat, &[centre.len(), 2], DType::F32)?;
        let count = gy as usize * m.cols();
        let parts: Vec<CentralPartial> = self
            .reduce(
                &CENTRAL,
                "column_central",
                m,
                Some(&centres),
                &Self::params(m, 0.0, 0.0, 0),
                (gx, gy),
                count,
                false,
            )
            .await?;
        let mut cols = vec![Central::default(); m.cols()];
        for (i, p) in parts.iter().enumerate() {
            cols[i % m.cols().max(1)].merge(&central_of(p));
        }
        Ok(cols)
    }

    /// GPU twin of `cpu::tensor_histogram`.
    pub async fn tensor_histogram(&self, m: &GpuMatrix, bins: &Bins) -> Result<Vec<u64>> {
        let groups = Self::grid_groups(m.len());
        let n = bins.bins as usize;
        let counts: Vec<u32> = self
            .reduce(
                &HISTOGRAM,
                "tensor_histogram",
                m,
                None,
                &Self::params(m, bins.lo, bins.scale, bins.bins),
                (groups, 1),
                n,
                true,
            )
            .await?;
        Ok(counts.into_iter().map(u64::from).collect())
    }

    /// GPU twin of `cpu::column_histogram`: `counts[col * bins + bin]`. Wide tensors are
    /// done in slices of columns whose counts fit one storage binding.
    pub async fn column_histogram(&self, m: &GpuMatrix, bins: &Bins) -> Result<Vec<u64>> {
        let (_, gy) = Self::column_grid(m)?;
        let nb = bins.bins as usize;
        let per_slice = ((self.max_binding_bytes / 4) as usize / nb).max(1);
        let mut all = Vec::with_capacity(m.cols() * nb);
        for col0 in (0..m.cols().max(1)).step_by(per_slice) {
            let ncols = per_slice.min(m.cols() - col0);
            let mut p = Self::params(m, bins.lo, bins.scale, bins.bins);
            p.col0 = col0 as u32;
            p.ncols = ncols as u32;
            let n = ncols * nb;
            let gx = ncols.div_ceil(COL_WG as usize).max(1) as u32;
            let counts: Vec<u32> = self
                .reduce(
                    &HISTOGRAM,
                    "column_histogram",
                    m,
                    None,
                    &p,
                    (gx, gy),
                    n,
                    true,
                )
                .await?;
            all.extend(counts.into_iter().map(u64::from));
        }
        Ok(all)
    }
}

fn moments_of(p: &MomentsPartial, count: u64) -> Moments {
    Moments {
        count,
        sum: p.sum as f64,
        sum_sq: p.sum_sq as f64,
        sum_abs: p.sum_abs as f64,
        min: p.min,
        max: p.max,
    }
}

fn central_of(p: &CentralPartial) -> Central {
    Central {
        m2: p.m2 as f64,
        m4: p.m4 as f64,
        above: p.above as u64,
    }
}
