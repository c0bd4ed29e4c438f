// Causal self-attention with grouped-query heads, one workgroup per (query t, head h,
// window b) (workgroup_id = (t, h, b)):
//
//   a[b, t, h, :] = sum_{j <= t} p_j v[b, j, h / (H / KV), :]
//   p_j = exp(s_j - max s) / sum_i exp(s_i - max s),  s_j = (q[b, t, h, :] . k[b, j, h', :]) scale
//
// with scale = 1 / sqrt(D) (host f32). Layout: q, k, v and a are token-major (B, T, heads, D),
// as the linear layers write them: element (b, t, h, d) of a tensor with `heads` heads at
// ((b T + t) heads + h) D + d. No key after t is read (the causal mask).
//
// Keys are taken in chunks of CHUNK: the 64 invocations compute the chunk's scores into
// workgroup memory (invocation i takes keys i, i + 64, ...), fold their max and their sum of
// exponentials as trees, and each invocation then accumulates output dims d = i, i + 64,
// i + 128, i + 192 (D <= 256). Between chunks the running max m, sum l and outputs are
// rescaled by exp(m_old - m_new) (the online softmax), so any T works with 1 KiB of
// workgroup memory; for T <= CHUNK it is the plain max-subtracted softmax.

struct Params {
    t: u32,        // tokens per window
    heads: u32,    // H
    kv_heads: u32, // KV
    d: u32,        // head dim, <= 256
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
};

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> a: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;

const WG: u32 = 64u;
const CHUNK: u32 = 256u;
const F32_MAX: f32 = 3.40282346e38;

var<workgroup> p: array<f32, CHUNK>;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(64)
fn causal_attention(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let t = wid.x;
    let h = wid.y;
    let b = wid.z;
    let d = params.d;
    let kvh = h / (params.heads / params.kv_heads);
    let q_at = ((b * params.t + t) * params.heads + h) * d;
    // Key/value j of this head starts at kv0 + j * kv_stride.
    let kv_stride = params.kv_heads * d;
    let kv0 = b * params.t * kv_stride + kvh * d;

    var m = -F32_MAX;
    var l = 0.0;
    var acc: array<f32, 4>;
    for (var s = 0u; s < 4u; s++) {
        acc[s] = 0.0;
    }
    for (var c0 = 0u; c0 <= t; c0 += CHUNK) {
        let n = min(CHUNK, t + 1u - c0);
        // Scores of this chunk, and this invocation's max.
        var mx = -F32_MAX;
        for (var j = lid; j < n; j += WG) {
            let k_at = kv0 + (c0 + j) * kv_stride;
            var dot = 0.0;
            for (var e = 0u; e < d; e++) {
                dot += q[q_at + e] * k[k_at + e];
            }
            let sj = dot * params.scale;
            p[j] = sj;
            mx = max(mx, sj);
        }
        red[lid] = mx;
        workgroupBarrier();
        for (var half = WG / 2u; half > 0u; half /= 2u) {
            if (lid < half) {
                red[lid] = max(red[lid], red[lid + half]);
            }
            workgroupBarrier();
        }
        let m_new = max(m, red[0]);
        workgroupBarrier();
        // exp(s - m_new) in place, and this invocation's share of their sum.
        var sum = 0.0;
        for (var j = lid; j < n; j += WG) {
            let e = exp(p[j] - m_new);
            p[j] = e;
            sum += e;
        }
        red[lid] = sum;
        workgroupBarrier();
        for (var half = WG / 2u; half > 0u; half /= 2u) {
            if (lid < half) {
                red[lid] += red[lid + half];
            }
            workgroupBarrier();
        }
        let alpha = exp(m - m_new);
        l = l * alpha + red[0];
        m = m_new;
        for (var s = 0u; s < 4u; s++) {
            let e = lid + WG * s;
            if (e < d) {
                var o = acc[s] * alpha;
                for (var j = 0u; j < n; j++) {
                    o += p[j] * v[kv0 + (c0 + j) * kv_stride + e];
                }
                acc[s] = o;
            }
        }
        // p and red are rewritten by the next chunk.
        workgroupBarrier();
    }
    for (var s = 0u; s < 4u; s++) {
        let e = lid + WG * s;
        if (e < d) {
            a[q_at + e] = acc[s] / l;
        }
    }
}
