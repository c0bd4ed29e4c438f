// Rotary position embedding, half-split ("neox", Hugging Face's rotate_half), in place on
// a tensor of (B, heads, T, D) values whose element (b, h, t, d) sits at
//   b * stride_b + h * stride_h + t * stride_t + d
// so one kernel serves the contiguous (B,H,T,D) layout and the (B,T,H,D) layout in which
// a linear layer writes q and k (stride_t = H D, stride_h = D).
//
//   y[d]       = x[d] cos[t, d]       - x[d + D/2] sin[t, d]        d < D/2
//   y[d + D/2] = x[d + D/2] cos[t, d + D/2] + x[d] sin[t, d + D/2]
//
// cos and sin are (T, D) tables computed on the host in f64 and uploaded (WGSL's sin and
// cos carry no accuracy guarantee). One invocation per pair (b, h, t, d < D/2): it reads
// both halves before writing either, so the rotation is safe in place.

struct Params {
    batch: u32,
    heads: u32,
    t: u32,
    d: u32,
    stride_b: u32,
    stride_h: u32,
    stride_t: u32,
    _pad: u32,
};

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> cos_t: array<f32>;
@group(0) @binding(2) var<storage, read> sin_t: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(256)
fn rope(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let pair = (wid.y * nwg.x + wid.x) * 256u + lid;
    let half = params.d / 2u;
    // pair = ((b * heads + h) * T + t) * half + i
    let total = params.batch * params.heads * params.t * half;
    if (pair >= total) {
        return;
    }
    let i = pair % half;
    let t = (pair / half) % params.t;
    let h = (pair / (half * params.t)) % params.heads;
    let b = pair / (half * params.t * params.heads);
    let at = b * params.stride_b + h * params.stride_h + t * params.stride_t;
    let x1 = x[at + i];
    let x2 = x[at + i + half];
    let row = t * params.d;
    x[at + i] = x1 * cos_t[row + i] + (-x2) * sin_t[row + i];
    x[at + i + half] = x2 * cos_t[row + i + half] + x1 * sin_t[row + i + half];
}
