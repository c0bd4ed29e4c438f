// Central moments and outlier counts, the second pass over a tensor once its mean is known:
//   m2 = sum (x - mean)^2,  m4 = sum (x - mean)^4  (kurtosis = n * m4 / m2^2, Pearson),
//   above = #{ |x| > threshold }   (threshold = k * mean|x| for the outlier fraction).
// Same layout and partials scheme as moments.wgsl: per workgroup for the whole tensor,
// per (row block, column) for columns, each column with its own mean and threshold.

struct Central {
    m2: f32,
    m4: f32,
    above: u32,
    _pad: u32,
};

struct Params {
    len: u32,
    rows: u32,
    cols: u32,
    rows_per_group: u32,
    mean: f32,      // tensor_central only
    threshold: f32, // tensor_central only
    _pad0: u32,
    _pad1: u32,
};

@group(0) @binding(0) var<storage, read> data: array<f32>;
@group(0) @binding(1) var<storage, read_write> partials: array<Central>;
@group(0) @binding(2) var<uniform> params: Params;
// column_central only: (mean, threshold) of every column.
@group(0) @binding(3) var<storage, read> column_centre: array<vec2<f32>>;

const WG: u32 = 256u;

var<workgroup> w_m2: array<f32, WG>;
var<workgroup> w_m4: array<f32, WG>;
var<workgroup> w_above: array<u32, WG>;

@compute @workgroup_size(256)
fn tensor_central(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    var m2 = 0.0;
    var m4 = 0.0;
    var above = 0u;
    let stride = nwg.x * WG;
    for (var i = wid.x * WG + lid; i < params.len; i += stride) {
        let x = data[i];
        let d = x - params.mean;
        let d2 = d * d;
        m2 += d2;
        m4 += d2 * d2;
        above += select(0u, 1u, abs(x) > params.threshold);
    }
    w_m2[lid] = m2;
    w_m4[lid] = m4;
    w_above[lid] = above;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if (lid < half) {
            w_m2[lid] += w_m2[lid + half];
            w_m4[lid] += w_m4[lid + half];
            w_above[lid] += w_above[lid + half];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        partials[wid.x] = Central(w_m2[0], w_m4[0], w_above[0], 0u);
    }
}

@compute @workgroup_size(64)
fn column_central(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let block = gid.y;
    if (col >= params.cols) {
        return;
    }
    let centre = column_centre[col];
    let r0 = block * params.rows_per_group;
    let r1 = min(r0 + params.rows_per_group, params.rows);
    var m2 = 0.0;
    var m4 = 0.0;
    var above = 0u;
    for (var r = r0; r < r1; r++) {
        let x = data[r * params.cols + col];
        let d = x - centre.x;
        let d2 = d * d;
        m2 += d2;
        m4 += d2 * d2;
        above += select(0u, 1u, abs(x) > centre.y);
    }
    partials[block * params.cols + col] = Central(m2, m4, above, 0u);
}
