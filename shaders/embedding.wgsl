// Token embedding, forward and backward (the CPU twins: train::ops::embedding_forward and
// embedding_backward). Shapes: N = B T rows, C channels, V vocabulary rows.
//
//   embedding_forward:  out[n, c] = wte[tokens[n], c]                       (N, C)
//   embedding_backward: dwte[v, c] += sum over the positions n with tokens[n] = v, in
//                       increasing n, of dout[n, c]                          (V, C)
//
// The backward is a scatter-add. Without float atomics it stays deterministic by owning each
// output: one invocation per (v, c) walks its own token's positions, which the host grouped
// by token (a counting sort of the batch's ids, in position order, the twin's grouping):
//   index[0 ..= V]          start of each vocabulary row's run of positions (starts)
//   index[V + 1 + i]        the i-th position of the grouped runs (positions)
// so the work is N C adds in all, whatever V is, and the bits equal the twin's (the same
// adds, in the same order, onto the same starting value).
//
// One invocation per output element, 256 per workgroup, flat index
// (wid.y * nwg.x + wid.x) * 256 + lid (a 2-D grid where one dimension is not enough).

struct Params {
    rows: u32,  // N (forward) or V (backward)
    cols: u32,  // C
    vocab: u32, // V
    _pad: u32,
};

const WG: u32 = 256u;

fn flat(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@group(0) @binding(0) var<storage, read> fwd_tokens: array<u32>;
@group(0) @binding(1) var<storage, read> fwd_wte: array<f32>;
@group(0) @binding(2) var<storage, read_write> fwd_out: array<f32>;
@group(0) @binding(3) var<uniform> fwd_params: Params;

@compute @workgroup_size(256)
fn embedding_forward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat(lid, wid, nwg);
    let p = fwd_params;
    if (i >= p.rows * p.cols) {
        return;
    }
    let n = i / p.cols;
    let c = i - n * p.cols;
    let tok = fwd_tokens[n];
    // The host checks the ids; an id out of range reads as a zero row, never out of bounds.
    var v = 0.0;
    if (tok < p.vocab) {
        v = fwd_wte[tok * p.cols + c];
    }
    fwd_out[i] = v;
}

@group(0) @binding(0) var<storage, read> bwd_index: array<u32>;
@group(0) @binding(1) var<storage, read> bwd_dout: array<f32>;
@group(0) @binding(2) var<storage, read_write> bwd_dwte: array<f32>;
@group(0) @binding(3) var<uniform> bwd_params: Params;

@compute @workgroup_size(256)
fn embedding_backward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat(lid, wid, nwg);
    let p = bwd_params;
    if (i >= p.vocab * p.cols) {
        return;
    }
    let v = i / p.cols;
    let c = i - v * p.cols;
    let positions = p.vocab + 1u;
    var acc = bwd_dwte[i];
    for (var j = bwd_index[v]; j < bwd_index[v + 1u]; j++) {
        acc += bwd_dout[bwd_index[positions + j] * p.cols + c];
    }
    bwd_dwte[i] = acc;
}
