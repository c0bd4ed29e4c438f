// The LM head's softmax fused with cross-entropy, forward and backward in one pass (the CPU
// twin: train::ops::lm_head_xent_forward / _backward; the logits come from matmul.wgsl).
// logits (N, V) in, overwritten; targets (N) token ids; losses (N).
//
//   p = softmax(logits row) (max subtracted), loss = log(sum_j exp(l_j - max)) - (l_tgt - max)
//   mode 0: the row becomes p;  mode 1: the row becomes dlogits = (p - onehot(tgt)) inv_n,
//   with inv_n = 1 / (predicted tokens), the gradient of the mean loss.
//
// One workgroup of 256 invocations per row (row = wid.y * nwg.x + wid.x): invocation i takes
// columns i, i + 256, ... in order, and the workgroup folds the maxima and the sums as trees
// (offsets 128, 64, ..., 1).
//
// loss_mean: out[0] = inv_n sum_n losses[n], one workgroup: invocation i adds n = i, i + 256,
// ... in order, then the tree (a fixed order: the same bits every run).

struct Params {
    rows: u32,
    cols: u32,
    inv_n: f32,
    mode: u32,
};

const WG: u32 = 256u;

var<workgroup> partial: array<f32, WG>;

fn fold_max(lid: u32) -> f32 {
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if (lid < half) {
            partial[lid] = max(partial[lid], partial[lid + half]);
        }
        workgroupBarrier();
    }
    let r = partial[0];
    // Every invocation has read the result before `partial` is written again.
    workgroupBarrier();
    return r;
}

fn fold_sum(lid: u32) -> f32 {
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if (lid < half) {
            partial[lid] += partial[lid + half];
        }
        workgroupBarrier();
    }
    let r = partial[0];
    workgroupBarrier();
    return r;
}

@group(0) @binding(0) var<storage, read_write> x_logits: array<f32>;
@group(0) @binding(1) var<storage, read> x_targets: array<u32>;
@group(0) @binding(2) var<storage, read_write> x_losses: array<f32>;
@group(0) @binding(3) var<uniform> x_params: Params;

@compute @workgroup_size(256)
fn xent_rows(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = wid.y * nwg.x + wid.x;
    // The same for the whole workgroup: every invocation returns, or none does.
    if (row >= x_params.rows) {
        return;
    }
    let v = x_params.cols;
    let base = row * v;
    var m = -3.40282346e38;
    for (var j = lid; j < v; j += WG) {
        m = max(m, x_logits[base + j]);
    }
    partial[lid] = m;
    m = fold_max(lid);
    let tgt = x_targets[row];
    // The invocation owning column tgt keeps its shifted logit: -log p[tgt] =
    // log(sum) - (l_tgt - m) exactly, also where p[tgt] underflows.
    var shifted_target = 0.0;
    var s = 0.0;
    for (var j = lid; j < v; j += WG) {
        let l = x_logits[base + j] - m;
        if (j == tgt) {
            shifted_target = l;
        }
        let e = exp(l);
        x_logits[base + j] = e;
        s += e;
    }
    partial[lid] = s;
    let sum = fold_sum(lid);
    let inv = 1.0 / sum;
    if (lid == tgt % WG) {
        x_losses[row] = log(sum) - shifted_target;
    }
    for (var j = lid; j < v; j += WG) {
        var p = x_logits[base + j] * inv;
        if (x_params.mode == 1u) {
            if (j == tgt) {
                p -= 1.0;
            }
            p *= x_params.inv_n;
        }
        x_logits[base + j] = p;
    }
}

@group(0) @binding(0) var<storage, read> m_losses: array<f32>;
@group(0) @binding(1) var<storage, read_write> m_out: array<f32>;
@group(0) @binding(2) var<uniform> m_params: Params;

@compute @workgroup_size(256)
fn loss_mean(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var n = lid; n < m_params.rows; n += WG) {
        s += m_losses[n];
    }
    partial[lid] = s;
    let total = fold_sum(lid);
    if (lid == 0u) {
        m_out[0] = total * m_params.inv_n;
    }
}
