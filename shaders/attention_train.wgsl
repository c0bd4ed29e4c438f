// Causal grouped-query attention for training, forward and backward, keeping the (B, H, T, T)
// probabilities the backward needs (the CPU twins: train::ops::attention_forward and
// attention_backward; the inference kernel attention.wgsl keeps none). Shapes: B windows of
// T tokens, H query heads, KV key/value heads (G = H / KV query heads per kv head, query head
// h reads kv head h / G), D head dim. q, dout, dq are token-major (N, H D); k, v, dk, dv
// (N, KV D); att, datt (B, H, T, T), row t holding columns t2 <= t (the rest 0).
//
// Forward:  att = att_dots(q, k, scale 1/sqrt(D)); att_softmax(att); out = att_mix(att, v)
// Backward: datt = att_dots(dout, v, scale 1); att_softmax_backward(att, datt)
//           (ds = p (dp - sum_t2 p dp) / sqrt(D));
//           dq += att_mix(datt, k); att_dkdv: dk += sum_{h in group} sum_t ds[t, t2] q[t],
//           dv += sum_{h in group} sum_t p[t, t2] dout[t]
//
// Every output element has one invocation that sums its terms in a fixed order (the twin's:
// keys t2 ascending; for dk and dv the group's heads, then queries t ascending), so there
// are no atomics and every run gives the same bits. Flat kernels: 256 invocations per
// workgroup, index (wid.y * nwg.x + wid.x) * 256 + lid.

struct Params {
    batch: u32,
    t: u32,
    heads: u32,
    kv_heads: u32,
    d: u32,
    scale: f32,      // att_dots: the factor on each dot; att_softmax_backward: 1/sqrt(D)
    accumulate: u32, // att_mix: 1 adds into out
    _pad: u32,
};

const WG: u32 = 256u;

fn flat(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// att_dots: out[b, h, t, t2] = scale a[b, t, h, :] . kv[b, t2, h / G, :] for t2 <= t, else 0.
@group(0) @binding(0) var<storage, read> dots_a: array<f32>;
@group(0) @binding(1) var<storage, read> dots_kv: array<f32>;
@group(0) @binding(2) var<storage, read_write> dots_out: array<f32>;
@group(0) @binding(3) var<uniform> dots_params: Params;

@compute @workgroup_size(256)
fn att_dots(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let p = dots_params;
    let i = flat(lid, wid, nwg);
    if (i >= p.batch * p.heads * p.t * p.t) {
        return;
    }
    let t2 = i % p.t;
    let t = (i / p.t) % p.t;
    let bh = i / (p.t * p.t);
    let h = bh % p.heads;
    let b = bh / p.heads;
    var s = 0.0;
    if (t2 <= t) {
        let kh = h / (p.heads / p.kv_heads);
        let a_at = ((b * p.t + t) * p.heads + h) * p.d;
        let k_at = ((b * p.t + t2) * p.kv_heads + kh) * p.d;
        for (var e = 0u; e < p.d; e++) {
            s += dots_a[a_at + e] * dots_kv[k_at + e];
        }
        s *= p.scale;
    }
    dots_out[i] = s;
}

// att_softmax: each row (b, h, t) of scores -> softmax over t2 <= t (max subtracted; the sum
// of exponentials in order t2 = 0..t), 0 beyond. One invocation per row.
@group(0) @binding(0) var<storage, read_write> sm_att: array<f32>;
@group(0) @binding(1) var<uniform> sm_params: Params;

@compute @workgroup_size(256)
fn att_softmax(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let p = sm_params;
    let row = flat(lid, wid, nwg);
    if (row >= p.batch * p.heads * p.t) {
        return;
    }
    let t = row % p.t;
    let at = row * p.t;
    var m = sm_att[at];
    for (var j = 1u; j <= t; j++) {
        m = max(m, sm_att[at + j]);
    }
    var sum = 0.0;
    for (var j = 0u; j <= t; j++) {
        let e = exp(sm_att[at + j] - m);
        sm_att[at + j] = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    for (var j = 0u; j <= t; j++) {
        sm_att[at + j] *= inv;
    }
    for (var j = t + 1u; j < p.t; j++) {
        sm_att[at + j] = 0.0;
    }
}

// att_mix: out[b, t, h, :] (+)= sum_{t2 <= t} w[b, h, t, t2] kv[b, t2, h / G, :]
// (the forward's p v, and the backward's dq += ds k). One invocation per output value.
@group(0) @binding(0) var<storage, read> mix_w: array<f32>;
@group(0) @binding(1) var<storage, read> mix_kv: array<f32>;
@group(0) @binding(2) var<storage, read_write> mix_out: array<f32>;
@group(0) @binding(3) var<uniform> mix_params: Params;

@compute @workgroup_size(256)
fn att_mix(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let p = mix_params;
    let i = flat(lid, wid, nwg);
    if (i >= p.batch * p.t * p.heads * p.d) {
        return;
    }
    let e = i % p.d;
    let h = (i / p.d) % p.heads;
    let n = i / (p.d * p.heads);
    let t = n % p.t;
    let b = n / p.t;
    let kh = h / (p.heads / p.kv_heads);
    let w_at = ((b * p.heads + h) * p.t + t) * p.t;
    var acc = 0.0;
    if (p.accumulate == 1u) {
        acc = mix_out[i];
    }
    for (var t2 = 0u; t2 <= t; t2++) {
        acc += mix_w[w_at + t2] * mix_kv[((b * p.t + t2) * p.kv_heads + kh) * p.d + e];
    }
    mix_out[i] = acc;
}

// att_softmax_backward: with dp the row of datt (dout . v) and p the row of att,
// datt = p (dp - sum_t2 p dp) scale over t2 <= t, 0 beyond. One invocation per row.
@group(0) @binding(0) var<storage, read> smb_att: array<f32>;
@group(0) @binding(1) var<storage, read_write> smb_datt: array<f32>;
@group(0) @binding(2) var<uniform> smb_params: Params;

@compute @workgroup_size(256)
fn att_softmax_backward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let p = smb_params;
    let row = flat(lid, wid, nwg);
    if (row >= p.batch * p.heads * p.t) {
        return;
    }
    let t = row % p.t;
    let at = row * p.t;
    var pdp = 0.0;
    for (var j = 0u; j <= t; j++) {
        pdp += smb_att[at + j] * smb_datt[at + j];
    }
    for (var j = 0u; j <= t; j++) {
        smb_datt[at + j] = smb_att[at + j] * (smb_datt[at + j] - pdp) * p.scale;
    }
    for (var j = t + 1u; j < p.t; j++) {
        smb_datt[at + j] = 0.0;
    }
}

// att_dkdv: for each (b, t2, kv head kh, e):
//   dk += sum_{h in kh's group} sum_{t >= t2} datt[b, h, t, t2] q[b, t, h, e]
//   dv += sum_{h in kh's group} sum_{t >= t2} att[b, h, t, t2] dout[b, t, h, e]
// One invocation per (dk, dv) value pair.
@group(0) @binding(0) var<storage, read> kv_datt: array<f32>;
@group(0) @binding(1) var<storage, read> kv_att: array<f32>;
@group(0) @binding(2) var<storage, read> kv_q: array<f32>;
@group(0) @binding(3) var<storage, read> kv_dout: array<f32>;
@group(0) @binding(4) var<storage, read_write> kv_dk: array<f32>;
@group(0) @binding(5) var<storage, read_write> kv_dv: array<f32>;
@group(0) @binding(6) var<uniform> kv_params: Params;

@compute @workgroup_size(256)
fn att_dkdv(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let p = kv_params;
    let i = flat(lid, wid, nwg);
    if (i >= p.batch * p.t * p.kv_heads * p.d) {
        return;
    }
    let e = i % p.d;
    let kh = (i / p.d) % p.kv_heads;
    let n = i / (p.d * p.kv_heads);
    let t2 = n % p.t;
    let b = n / p.t;
    let g = p.heads / p.kv_heads;
    var dk = kv_dk[i];
    var dv = kv_dv[i];
    for (var h = kh * g; h < (kh + 1u) * g; h++) {
        for (var t = t2; t < p.t; t++) {
            let idx = ((b * p.heads + h) * p.t + t) * p.t + t2;
            let row = ((b * p.t + t) * p.heads + h) * p.d + e;
            dk += kv_datt[idx] * kv_q[row];
            dv += kv_att[idx] * kv_dout[row];
        }
    }
    kv_dk[i] = dk;
    kv_dv[i] = dv;
}
