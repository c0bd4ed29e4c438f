// Moments of a tensor: sum, sum of squares, sum of |x|, min and max.
//
// The tensor is a flat array of f32 (one chunk of it: the host splits tensors bigger than a
// storage binding). For the per-column entry point it is viewed as [rows, cols], row-major.
// Both entry points write partial results, which the host adds up in f64:
//   tensor_moments: one record per workgroup. G workgroups of 256 invocations walk the data
//                   with a grid stride (G * 256), so any length works with G <= 65535;
//                   each workgroup then folds its 256 records in workgroup memory.
//   column_moments: one record per (row block, column). Invocation x is a column (adjacent
//                   invocations read adjacent addresses); workgroup y is a block of
//                   `rows_per_group` rows.

struct Moments {
    sum: f32,
    sum_sq: f32,
    sum_abs: f32,
    min: f32,
    max: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
};

struct Params {
    len: u32,            // elements in this chunk
    rows: u32,           // rows in this chunk (per-column view)
    cols: u32,
    rows_per_group: u32, // rows one column_moments invocation folds
};

@group(0) @binding(0) var<storage, read> data: array<f32>;
@group(0) @binding(1) var<storage, read_write> partials: array<Moments>;
@group(0) @binding(2) var<uniform> params: Params;

const WG: u32 = 256u;
const F32_MAX: f32 = 3.40282346e38;

var<workgroup> w_sum: array<f32, WG>;
var<workgroup> w_sq: array<f32, WG>;
var<workgroup> w_abs: array<f32, WG>;
var<workgroup> w_min: array<f32, WG>;
var<workgroup> w_max: array<f32, WG>;

@compute @workgroup_size(256)
fn tensor_moments(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    var s = 0.0;
    var sq = 0.0;
    var sa = 0.0;
    var lo = F32_MAX;
    var hi = -F32_MAX;
    let stride = nwg.x * WG;
    for (var i = wid.x * WG + lid; i < params.len; i += stride) {
        let x = data[i];
        s += x;
        sq += x * x;
        sa += abs(x);
        lo = min(lo, x);
        hi = max(hi, x);
    }
    w_sum[lid] = s;
    w_sq[lid] = sq;
    w_abs[lid] = sa;
    w_min[lid] = lo;
    w_max[lid] = hi;
    workgroupBarrier();
    // Tree fold: after the step with offset `half`, slots [0, half) hold the sums of pairs.
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if (lid < half) {
            w_sum[lid] += w_sum[lid + half];
            w_sq[lid] += w_sq[lid + half];
            w_abs[lid] += w_abs[lid + half];
            w_min[lid] = min(w_min[lid], w_min[lid + half]);
            w_max[lid] = max(w_max[lid], w_max[lid + half]);
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        partials[wid.x] = Moments(w_sum[0], w_sq[0], w_abs[0], w_min[0], w_max[0], 0.0, 0.0, 0.0);
    }
}

@compute @workgroup_size(64)
fn column_moments(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let block = gid.y;
    if (col >= params.cols) {
        return;
    }
    let r0 = block * params.rows_per_group;
    let r1 = min(r0 + params.rows_per_group, params.rows);
    var s = 0.0;
    var sq = 0.0;
    var sa = 0.0;
    var lo = F32_MAX;
    var hi = -F32_MAX;
    for (var r = r0; r < r1; r++) {
        let x = data[r * params.cols + col];
        s += x;
        sq += x * x;
        sa += abs(x);
        lo = min(lo, x);
        hi = max(hi, x);
    }
    partials[block * params.cols + col] = Moments(s, sq, sa, lo, hi, 0.0, 0.0, 0.0);
}
