// The bias lab's weighted cross-entropy, the part after the softmax (the CPU twins:
// sebra::loss::upweights for Stage 1's weights, the terms of weighted_ce_forward, and
// weighted_ce_backward). Legend: B rows (the batch), K classes.
//
// In: probs (B, K) = softmax(logits) (xent.wgsl's xent_rows in mode 0), labels (B), ce (B) =
// -log p[label] (also from xent_rows). Per row i, with its weight w_i:
//   mode 0 (fixed): w_i = weights[i], given (the oracle's group-balanced weights);
//   mode 1 (up):    w_i = p[i, label]^beta_inv, Stage 1's up-weight, written to weights[i]
//                   (0 where p[i, label] underflowed to 0, as pow(0, beta_inv > 0) is);
//   wce[i] = w_i ce[i]; the batch's loss is xent.wgsl's loss_mean of wce with 1/B (the
//   authors' loss averages over the batch, not over the weights' sum);
//   the row becomes dlogits = (w_i / B) (p - onehot(label)), w_i a constant (the
//   stop-gradient: no term flows through the weight's dependence on p), multiplied in the
//   twin's order: c = w_i * (1/B) first, then c * (p - onehot).
//
// One invocation per row (K is the lab's few classes; it loops over them), 256 per
// workgroup, row = (wid.y * nwg.x + wid.x) * 256 + lid.

struct Params {
    rows: u32,     // B
    cols: u32,     // K
    inv_n: f32,    // 1 / B, rounded once on the host as the twin's
    mode: u32,     // 0 fixed weights, 1 up-weights
    beta_inv: f32, // Stage 1's 1 / beta (mode 1)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
};

@group(0) @binding(0) var<storage, read_write> w_probs: array<f32>;
@group(0) @binding(1) var<storage, read> w_labels: array<u32>;
@group(0) @binding(2) var<storage, read> w_ce: array<f32>;
@group(0) @binding(3) var<storage, read_write> w_weights: array<f32>;
@group(0) @binding(4) var<storage, read_write> w_wce: array<f32>;
@group(0) @binding(5) var<uniform> w_params: Params;

@compute @workgroup_size(256)
fn weighted_xent_rows(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (row >= w_params.rows) {
        return;
    }
    let k = w_params.cols;
    let base = row * k;
    let y = w_labels[row];
    var w = 0.0;
    if (w_params.mode == 1u) {
        let py = w_probs[base + y];
        // WGSL's pow is undefined at 0; the twin's pow(0, beta_inv > 0) is 0.
        if (py > 0.0) {
            w = pow(py, w_params.beta_inv);
        }
        w_weights[row] = w;
    } else {
        w = w_weights[row];
    }
    w_wce[row] = w * w_ce[row];
    let c = w * w_params.inv_n;
    for (var j = 0u; j < k; j++) {
        var d = w_probs[base + j];
        if (j == y) {
            d -= 1.0;
        }
        w_probs[base + j] = c * d;
    }
}
