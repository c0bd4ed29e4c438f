// RMSNorm of each row: y = x / sqrt(mean(x^2) + eps) * w, x and y (rows, C), w (C).
//
// One workgroup of 256 invocations per row (row = wid.y * nwg.x + wid.x, so more than 65535
// rows can be dispatched as a 2-D grid). Invocation i adds x[i]^2, x[i + 256]^2, ... in
// order, then the workgroup folds its 256 partial sums as a tree (offsets 128, 64, ..., 1).
// The CPU twin (`cpu_forward::rms_norm`) adds in exactly this order.
//
// mean = sum * inv_c with inv_c = 1 / C computed on the host in f32 (as candle's
// mean_keepdim multiplies by 1 / C); then y = (x * r) * w with r = 1 / sqrt(mean + eps).

struct Params {
    rows: u32,
    cols: u32,
    inv_c: f32,
    eps: f32,
};

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

const WG: u32 = 256u;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(256)
fn rms_norm(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = wid.y * nwg.x + wid.x;
    // `row` is the same for the whole workgroup: every invocation returns, or none does.
    if (row >= params.rows) {
        return;
    }
    let base = row * params.cols;
    var s = 0.0;
    for (var j = lid; j < params.cols; j += WG) {
        let v = x[base + j];
        s += v * v;
    }
    partial[lid] = s;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if (lid < half) {
            partial[lid] += partial[lid + half];
        }
        workgroupBarrier();
    }
    let r = 1.0 / sqrt(partial[0] * params.inv_c + params.eps);
    for (var j = lid; j < params.cols; j += WG) {
        y[base + j] = (x[base + j] * r) * weight[j];
    }
}
