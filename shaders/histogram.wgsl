// Fixed-bin histograms over [lo, lo + bins / scale]:
//   bin(x) = clamp(floor((x - lo) * scale), 0, bins - 1)
// so values below lo land in the first bin and values at or above the top in the last
// (the host sets lo = min and the top = max, so the clamp only catches the maximum itself).
// The CPU twin evaluates the same f32 expression.
//   tensor_histogram: workgroup-local counters (bins <= 256), then one atomicAdd per
//                     non-empty bin into the global counts; grid stride as in moments.wgsl.
//   column_histogram: counts[(col - col0) * bins + bin] for the columns col0 .. col0 + ncols
//                     (the host splits wide tensors so the counts fit one binding); atomics
//                     in global memory; invocation x is a column, workgroup y a block of rows.

struct Params {
    len: u32,
    rows: u32,
    cols: u32,
    rows_per_group: u32,
    lo: f32,
    scale: f32,
    bins: u32,
    col0: u32,   // column_histogram: first column of this slice
    ncols: u32,  // column_histogram: columns in this slice
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
};

@group(0) @binding(0) var<storage, read> data: array<f32>;
@group(0) @binding(1) var<storage, read_write> counts: array<atomic<u32>>;
@group(0) @binding(2) var<uniform> params: Params;

const WG: u32 = 256u;
const MAX_BINS: u32 = 256u;

var<workgroup> local_counts: array<atomic<u32>, MAX_BINS>;

fn bin_of(x: f32) -> u32 {
    let t = floor((x - params.lo) * params.scale);
    return u32(clamp(t, 0.0, f32(params.bins - 1u)));
}

@compute @workgroup_size(256)
fn tensor_histogram(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var b = lid; b < params.bins; b += WG) {
        atomicStore(&local_counts[b], 0u);
    }
    workgroupBarrier();
    let stride = nwg.x * WG;
    for (var i = wid.x * WG + lid; i < params.len; i += stride) {
        atomicAdd(&local_counts[bin_of(data[i])], 1u);
    }
    workgroupBarrier();
    for (var b = lid; b < params.bins; b += WG) {
        let c = atomicLoad(&local_counts[b]);
        if (c > 0u) {
            atomicAdd(&counts[b], c);
        }
    }
}

@compute @workgroup_size(64)
fn column_histogram(@builtin(global_invocation_id) gid: vec3<u32>) {
    let slot = gid.x;
    let col = params.col0 + slot;
    let block = gid.y;
    if (slot >= params.ncols || col >= params.cols) {
        return;
    }
    let r0 = block * params.rows_per_group;
    let r1 = min(r0 + params.rows_per_group, params.rows);
    for (var r = r0; r < r1; r++) {
        atomicAdd(&counts[slot * params.bins + bin_of(data[r * params.cols + col])], 1u);
    }
}
