// RoPE for training, out of place, forward and backward (the CPU twins: train::ops::
// rope_forward and rope_backward), Hugging Face LLaMA's half-split form. Rows are the N = B T
// tokens of a (N, width) tensor, width = heads D; row n sits at position n % T. Within each
// head the pair (x1, x2) = (x[d], x[d + D/2]) turns by the angle of (position, d), whose cos
// and sin come from (T, D/2) tables computed on the host in f64 (WGSL's sin and cos carry no
// accuracy guarantee):
//
//   forward  (backward = 0): out1 = x1 cos - x2 sin,  out2 = x2 cos + x1 sin
//   backward (backward = 1): out1 += x1 cos + x2 sin, out2 += x2 cos - x1 sin   (R^T, adding)
//
// One invocation per pair (n, head, d < D/2), 256 per workgroup, flat index
// (wid.y * nwg.x + wid.x) * 256 + lid.

struct Params {
    rows: u32,     // N
    t: u32,        // T
    d: u32,        // head dim D (even)
    width: u32,    // heads D
    backward: u32, // 1: the transpose, added into out
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
};

@group(0) @binding(0) var<storage, read> inp: array<f32>;
@group(0) @binding(1) var<storage, read> cos_t: array<f32>;
@group(0) @binding(2) var<storage, read> sin_t: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;

@compute @workgroup_size(256)
fn rope_rows(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let pair = (wid.y * nwg.x + wid.x) * 256u + lid;
    let half = params.d / 2u;
    let pairs_per_row = params.width / 2u;
    if (pair >= params.rows * pairs_per_row) {
        return;
    }
    let n = pair / pairs_per_row;
    let j = pair - n * pairs_per_row; // head * half + i
    let head = j / half;
    let i = j - head * half;
    let pos = n % params.t;
    let at = n * params.width + head * params.d + i;
    let x1 = inp[at];
    let x2 = inp[at + half];
    let c = cos_t[pos * half + i];
    let s = sin_t[pos * half + i];
    if (params.backward == 1u) {
        out[at] += x1 * c + x2 * s;
        out[at + half] += x2 * c - x1 * s;
    } else {
        out[at] = x1 * c - x2 * s;
        out[at + half] = x2 * c + x1 * s;
    }
}
