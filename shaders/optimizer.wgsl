// The end of a training step: gradient norms, the global-norm clip and the AdamW update
// (the CPU twins: train::ops::sum_squares, the clip in train::train, train::ops::adamw_update).
//
//   sum_squares: out[slot] (+)= sum_i x[offset + i]^2, i < len. One workgroup of 256:
//                invocation j adds i = j, j + 256, ... in order, then the tree (offsets 128,
//                ..., 1): a fixed order, so the same bits every run. A block's gradient norm
//                is sqrt of the slot its tensors were added into (accumulate = 1 after the
//                first). Offsets in elements: the whole buffer is bound.
//   clip_scale:  total = sqrt(sum_s sums[s]), s < count; scale[0] = clip / (total + 1e-6)
//                when clip > 0 and that is below 1, else 1 (torch's clip_grad_norm_).
//   adamw:       g = grad scale[0];  p *= decay (when decay_on);
//                m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//                p -= step_size m / (sqrt(v) / bc2_sqrt + eps)
//                with step_size = lr / (1 - b1^t) and bc2_sqrt = sqrt(1 - b2^t) from the host
//                (the schedule's lr and the step count live there). One invocation per value,
//                256 per workgroup, flat index (wid.y * nwg.x + wid.x) * 256 + lid.

struct SumParams {
    len: u32,
    offset: u32,
    slot: u32,
    accumulate: u32,
};

struct ClipParams {
    count: u32,
    clip: f32,
    _pad0: u32,
    _pad1: u32,
};

struct AdamParams {
    len: u32,
    step_size: f32,
    bc2_sqrt: f32,
    b1: f32,
    b2: f32,
    one_minus_b1: f32,
    one_minus_b2: f32,
    eps: f32,
    decay: f32,
    decay_on: u32,
    _pad0: u32,
    _pad1: u32,
};

const WG: u32 = 256u;

var<workgroup> partial: array<f32, WG>;

@group(0) @binding(0) var<storage, read> ss_x: array<f32>;
@group(0) @binding(1) var<storage, read_write> ss_out: array<f32>;
@group(0) @binding(2) var<uniform> ss_params: SumParams;

@compute @workgroup_size(256)
fn sum_squares(@builtin(local_invocation_index) lid: u32) {
    let p = ss_params;
    var s = 0.0;
    for (var i = lid; i < p.len; i += WG) {
        let v = ss_x[p.offset + i];
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
    if (lid == 0u) {
        var total = partial[0];
        if (p.accumulate == 1u) {
            total += ss_out[p.slot];
        }
        ss_out[p.slot] = total;
    }
}

@group(0) @binding(0) var<storage, read> cs_sums: array<f32>;
@group(0) @binding(1) var<storage, read_write> cs_scale: array<f32>;
@group(0) @binding(2) var<uniform> cs_params: ClipParams;

@compute @workgroup_size(1)
fn clip_scale() {
    var total = 0.0;
    for (var s = 0u; s < cs_params.count; s++) {
        total += cs_sums[s];
    }
    var scale = 1.0;
    if (cs_params.clip > 0.0) {
        let coef = cs_params.clip / (sqrt(total) + 1e-6);
        if (coef < 1.0) {
            scale = coef;
        }
    }
    cs_scale[0] = scale;
}

@group(0) @binding(0) var<storage, read_write> ad_p: array<f32>;
@group(0) @binding(1) var<storage, read> ad_g: array<f32>;
@group(0) @binding(2) var<storage, read_write> ad_m: array<f32>;
@group(0) @binding(3) var<storage, read_write> ad_v: array<f32>;
@group(0) @binding(4) var<storage, read> ad_scale: array<f32>;
@group(0) @binding(5) var<uniform> ad_params: AdamParams;

@compute @workgroup_size(256)
fn adamw(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let a = ad_params;
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= a.len) {
        return;
    }
    let g = ad_g[i] * ad_scale[0];
    var p = ad_p[i];
    if (a.decay_on == 1u) {
        p *= a.decay;
    }
    let m = a.b1 * ad_m[i] + a.one_minus_b1 * g;
    let v = a.b2 * ad_v[i] + a.one_minus_b2 * g * g;
    ad_m[i] = m;
    ad_v[i] = v;
    ad_p[i] = p - a.step_size * m / (sqrt(v) / a.bc2_sqrt + a.eps);
}
