// Negative log-likelihood of each row's target: nll = log(sum_j exp(x_j)) - x[target], the
// log-sum-exp taken as m + log(sum_j exp(x_j - m)) with m = max_j x_j, x (rows, C) logits,
// targets (rows) token ids stored as f32 (exact below 2^24), nll (rows).
//
// One workgroup of 256 invocations per row (row = wid.y * nwg.x + wid.x). Invocation i takes
// the max of x[i], x[i + 256], ... and the workgroup folds the 256 maxima as a tree; then
// invocation i adds exp(x[i] - m), exp(x[i + 256] - m), ... in order and the workgroup folds
// those sums as a tree (offsets 128, 64, ..., 1). The CPU twin (`cpu_forward::token_nll`)
// works in exactly this order.

struct Params {
    rows: u32,
    cols: u32,
};

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<f32>;
@group(0) @binding(2) var<storage, read_write> nll: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

const WG: u32 = 256u;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(256)
fn token_nll(
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
    var m = -3.402823e38;
    for (var j = lid; j < params.cols; j += WG) {
        m = max(m, x[base + j]);
    }
    partial[lid] = m;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if (lid < half) {
            partial[lid] = max(partial[lid], partial[lid + half]);
        }
        workgroupBarrier();
    }
    let mx = partial[0];
    workgroupBarrier();
    var s = 0.0;
    for (var j = lid; j < params.cols; j += WG) {
        s += exp(x[base + j] - mx);
    }
    partial[lid] = s;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if (lid < half) {
            partial[lid] += partial[lid + half];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let t = u32(targets[row]);
        nll[row] = (mx + log(partial[0])) - x[base + t];
    }
}
