// RMSNorm for training, forward and backward (the CPU twins: train::ops::rmsnorm_forward and
// rmsnorm_backward). x, out, dout, dx (N, C); w, dw (C); rstd (N).
//
//   rmsnorm_forward:      rstd[n] = 1 / sqrt(sum_c x[n,c]^2 / C + eps)
//                         out[n,c] = x[n,c] rstd[n] w[c]               (rstd kept for the backward)
//   rmsnorm_backward:     g = dout w; k = sum_c(g x) / C rstd^2
//                         dx[n,c] += rstd (g[c] - x[n,c] k)
//   rmsnorm_weight_grad:  dw[c] += sum over n, in order, of dout[n,c] x[n,c] rstd[n]
//
// The two per-row kernels run one workgroup of 256 invocations per row (row = wid.y * nwg.x +
// wid.x): invocation i sums channels i, i + 256, ... in order, and the workgroup folds the
// 256 partial sums as a tree (offsets 128, 64, ..., 1). The weight gradient is a reduction
// over rows in a fixed order: one invocation per channel adds the rows n = 0, 1, ..., N - 1
// in order (the twin's order), so no atomics and the same result on every run.

struct Params {
    rows: u32,
    cols: u32,
    inv_c: f32, // 1 / C, computed on the host
    eps: f32,
};

const WG: u32 = 256u;

var<workgroup> partial: array<f32, WG>;

// Folds `partial` (every invocation has written its slot) and returns the sum, the same in
// every invocation.
fn fold_sum(lid: u32) -> f32 {
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if (lid < half) {
            partial[lid] += partial[lid + half];
        }
        workgroupBarrier();
    }
    return partial[0];
}

@group(0) @binding(0) var<storage, read> f_x: array<f32>;
@group(0) @binding(1) var<storage, read> f_w: array<f32>;
@group(0) @binding(2) var<storage, read_write> f_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> f_rstd: array<f32>;
@group(0) @binding(4) var<uniform> f_params: Params;

@compute @workgroup_size(256)
fn rmsnorm_forward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = wid.y * nwg.x + wid.x;
    // `row` is the same for the whole workgroup: every invocation returns, or none does.
    if (row >= f_params.rows) {
        return;
    }
    let base = row * f_params.cols;
    var s = 0.0;
    for (var j = lid; j < f_params.cols; j += WG) {
        let v = f_x[base + j];
        s += v * v;
    }
    partial[lid] = s;
    let r = 1.0 / sqrt(fold_sum(lid) * f_params.inv_c + f_params.eps);
    if (lid == 0u) {
        f_rstd[row] = r;
    }
    for (var j = lid; j < f_params.cols; j += WG) {
        f_out[base + j] = f_x[base + j] * r * f_w[j];
    }
}

@group(0) @binding(0) var<storage, read> b_dout: array<f32>;
@group(0) @binding(1) var<storage, read> b_x: array<f32>;
@group(0) @binding(2) var<storage, read> b_w: array<f32>;
@group(0) @binding(3) var<storage, read> b_rstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> b_dx: array<f32>;
@group(0) @binding(5) var<uniform> b_params: Params;

@compute @workgroup_size(256)
fn rmsnorm_backward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= b_params.rows) {
        return;
    }
    let base = row * b_params.cols;
    var s = 0.0;
    for (var j = lid; j < b_params.cols; j += WG) {
        s += b_dout[base + j] * b_w[j] * b_x[base + j];
    }
    partial[lid] = s;
    let r = b_rstd[row];
    let k = fold_sum(lid) * b_params.inv_c * r * r;
    for (var j = lid; j < b_params.cols; j += WG) {
        b_dx[base + j] += r * (b_dout[base + j] * b_w[j] - b_x[base + j] * k);
    }
}

@group(0) @binding(0) var<storage, read> w_dout: array<f32>;
@group(0) @binding(1) var<storage, read> w_x: array<f32>;
@group(0) @binding(2) var<storage, read> w_rstd: array<f32>;
@group(0) @binding(3) var<storage, read_write> w_dw: array<f32>;
@group(0) @binding(4) var<uniform> w_params: Params;

@compute @workgroup_size(256)
fn rmsnorm_weight_grad(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let c = (wid.y * nwg.x + wid.x) * WG + lid;
    if (c >= w_params.cols) {
        return;
    }
    var acc = 0.0;
    for (var n = 0u; n < w_params.rows; n++) {
        let at = n * w_params.cols + c;
        acc += w_dout[at] * w_x[at] * w_rstd[n];
    }
    w_dw[c] += acc;
}
