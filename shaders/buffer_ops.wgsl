// Buffer ops on flat runs of 4-byte elements, the bookkeeping a training step needs:
//   fill:       x[offset + i] = value (bits; 0 zeroes f32 and u32 alike)   i < len
//   copy_rows:  dst[dst_offset + r dst_stride + c] = src[src_offset + r src_stride + c]
//               r < rows, c < cols (a flat copy is one row)
//   accumulate: acc[dst_offset + i] += scale * b[src_offset + i]            i < len
//               (gradient accumulation; scale = 1 adds b exactly, as 1 * b = b in f32)
// The host binds the whole buffers and passes element offsets, so views at any offset work.
// One invocation per element, 256 per workgroup; the host dispatches a 2-D grid of
// workgroups when the count / 256 exceeds 65535: flat index (wid.y * nwg.x + wid.x) * 256 + lid.
// The CPU twins are compute::cpu_forward::{fill, copy_rows, accumulate}.

struct FillParams {
    len: u32,
    offset: u32,
    value: u32,
    _pad: u32,
};

struct CopyParams {
    rows: u32,
    cols: u32,
    src_offset: u32,
    src_stride: u32,
    dst_offset: u32,
    dst_stride: u32,
    _pad0: u32,
    _pad1: u32,
};

struct AccumulateParams {
    len: u32,
    dst_offset: u32,
    src_offset: u32,
    scale: f32,
};

const WG: u32 = 256u;

fn flat(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// fill: binding 0 the buffer (as raw bits), 1 the parameters.
@group(0) @binding(0) var<storage, read_write> fill_x: array<u32>;
@group(0) @binding(1) var<uniform> fill_params: FillParams;

@compute @workgroup_size(256)
fn fill(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat(lid, wid, nwg);
    if (i < fill_params.len) {
        fill_x[fill_params.offset + i] = fill_params.value;
    }
}

// copy_rows: 0 the source, 1 the destination (raw bits: f32 and u32 alike), 2 parameters.
@group(0) @binding(0) var<storage, read> copy_src: array<u32>;
@group(0) @binding(1) var<storage, read_write> copy_dst: array<u32>;
@group(0) @binding(2) var<uniform> copy_params: CopyParams;

@compute @workgroup_size(256)
fn copy_rows(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat(lid, wid, nwg);
    let p = copy_params;
    if (i < p.rows * p.cols) {
        let r = i / p.cols;
        let c = i - r * p.cols;
        copy_dst[p.dst_offset + r * p.dst_stride + c] = copy_src[p.src_offset + r * p.src_stride + c];
    }
}

// accumulate: 0 the accumulator, 1 the addend, 2 parameters.
@group(0) @binding(0) var<storage, read_write> acc: array<f32>;
@group(0) @binding(1) var<storage, read> addend: array<f32>;
@group(0) @binding(2) var<uniform> acc_params: AccumulateParams;

@compute @workgroup_size(256)
fn accumulate(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat(lid, wid, nwg);
    if (i < acc_params.len) {
        acc[acc_params.dst_offset + i] += acc_params.scale * addend[acc_params.src_offset + i];
    }
}
