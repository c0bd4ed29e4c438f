// The bias lab's CNN ops (the CPU twins: sebra::cnn). Legend as there: B batch, C input
// channels, O output channels, H x W a map, P = H W, K = C 9 the taps of a 3x3 convolution
// (padding 1, stride 1). Maps are NCHW row-major, a convolution's weight (O, C, 3, 3) = (O, K),
// im2col's columns (B, K, P).
//
// Every output element is written by one invocation that sums its terms in the twin's order
// (no atomics): a backward adds into its gradient (`+=`), except `conv_dcols`, which
// overwrites (scratch for im2col's backward, as the twin). One invocation per output value,
// 256 per workgroup, flat index (wid.y * nwg.x + wid.x) * 256 + lid.

struct Params {
    batch: u32, // B (the pools: B C planes)
    chans: u32, // C
    outs: u32,  // O
    h: u32,
    w: u32,
    len: u32, // values the dispatch writes
    inv: f32, // the average pool's 1 / P, rounded once on the host as the twin's
    _pad: u32,
};

fn flat(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

// ---------------------------------------------------------------------------------------
// im2col: cols[b, c 9 + ky 3 + kx, y W + x] = inp[b, c, y + ky - 1, x + kx - 1], 0 outside.

@group(0) @binding(0) var<storage, read> i2c_inp: array<f32>;
@group(0) @binding(1) var<storage, read_write> i2c_cols: array<f32>;
@group(0) @binding(2) var<uniform> i2c_params: Params;

@compute @workgroup_size(256)
fn im2col_forward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat(lid, wid, nwg);
    let pr = i2c_params;
    if (i >= pr.len) {
        return;
    }
    let p = pr.h * pr.w;
    let k = pr.chans * 9u;
    let b = i / (k * p);
    let r = i % (k * p);
    let t = r / p;
    let pix = r % p;
    let c = t / 9u;
    let tap = t % 9u;
    let yi = i32(pix / pr.w) + i32(tap / 3u) - 1;
    let xi = i32(pix % pr.w) + i32(tap % 3u) - 1;
    var v = 0.0;
    if (yi >= 0 && xi >= 0 && yi < i32(pr.h) && xi < i32(pr.w)) {
        v = i2c_inp[(b * pr.chans + c) * p + u32(yi) * pr.w + u32(xi)];
    }
    i2c_cols[i] = v;
}

// dinp[b, c, yi, xi] += dcols at every tap that read it, taps 0..8 in order (the twin adds
// them to the pixel in that order).

@group(0) @binding(0) var<storage, read> c2i_dcols: array<f32>;
@group(0) @binding(1) var<storage, read_write> c2i_dinp: array<f32>;
@group(0) @binding(2) var<uniform> c2i_params: Params;

@compute @workgroup_size(256)
fn im2col_backward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat(lid, wid, nwg);
    let pr = c2i_params;
    if (i >= pr.len) {
        return;
    }
    let p = pr.h * pr.w;
    let bc = i / p; // b C + c
    let pix = i % p;
    let b = bc / pr.chans;
    let c = bc % pr.chans;
    let yi = i32(pix / pr.w);
    let xi = i32(pix % pr.w);
    let base = (b * pr.chans * 9u + c * 9u) * p;
    var acc = c2i_dinp[i];
    for (var tap = 0u; tap < 9u; tap++) {
        let y = yi - i32(tap / 3u) + 1;
        let x = xi - i32(tap % 3u) + 1;
        if (y >= 0 && x >= 0 && y < i32(pr.h) && x < i32(pr.w)) {
            acc += c2i_dcols[base + tap * p + u32(y) * pr.w + u32(x)];
        }
    }
    c2i_dinp[i] = acc;
}

// ---------------------------------------------------------------------------------------
// Convolution as a per-image product: out[b, o, p] = bias[o] + sum_t weight[o, t] cols[b, t, p],
// t = 0, 1, ..., K - 1 in order after the bias (the twin's order).

@group(0) @binding(0) var<storage, read> cf_cols: array<f32>;
@group(0) @binding(1) var<storage, read> cf_weight: array<f32>;
@group(0) @binding(2) var<storage, read> cf_bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> cf_out: array<f32>;
@group(0) @binding(4) var<uniform> cf_params: Params;

@compute @workgroup_size(256)
fn conv_forward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat(lid, wid, nwg);
    let pr = cf_params;
    if (i >= pr.len) {
        return;
    }
    let p = pr.h * pr.w;
    let k = pr.chans * 9u;
    let bo = i / p;
    let pix = i % p;
    let b = bo / pr.outs;
    let o = bo % pr.outs;
    var acc = cf_bias[o];
    let col = b * k * p + pix;
    for (var t = 0u; t < k; t++) {
        acc += cf_weight[o * k + t] * cf_cols[col + t * p];
    }
    cf_out[i] = acc;
}

// dweight[o, t] += sum_b dot(dout[b, o, :], cols[b, t, :]) and dbias[o] += sum_b
// sum8(dout[b, o, :]), each image's term added in turn (the twin's order), in two passes so
// that the images' terms are computed in parallel:
// - conv_wgrad_terms: terms[(b O + o) (K + 1) + t] = dout[b, o, :] . cols[b, t, :] for t < K,
//   its pixels added in order from zero (the twin's gemm_set), and sum8(dout[b, o, :]) at
//   t = K in train::ops::sum8's order: 8 interleaved partial sums over the chunks of 8, a
//   sequential tail, closed as ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7)) + tail;
// - conv_wgrad_reduce: dweight[o, t] (t < K) or dbias[o] (t = K) += the terms, b = 0, 1, ...

@group(0) @binding(0) var<storage, read> wt_dout: array<f32>;
@group(0) @binding(1) var<storage, read> wt_cols: array<f32>;
@group(0) @binding(2) var<storage, read_write> wt_terms: array<f32>;
@group(0) @binding(3) var<uniform> wt_params: Params;

@compute @workgroup_size(256)
fn conv_wgrad_terms(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat(lid, wid, nwg);
    let pr = wt_params;
    if (i >= pr.len) {
        return;
    }
    let p = pr.h * pr.w;
    let k = pr.chans * 9u;
    let bo = i / (k + 1u);
    let t = i % (k + 1u);
    let b = bo / pr.outs;
    let g = bo * p;
    if (t < k) {
        let x = (b * k + t) * p;
        var acc = 0.0;
        for (var j = 0u; j < p; j++) {
            acc += wt_dout[g + j] * wt_cols[x + j];
        }
        wt_terms[i] = acc;
        return;
    }
    let full = p - p % 8u;
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    var tail = 0.0;
    for (var j = 0u; j < full; j += 8u) {
        lo += vec4<f32>(wt_dout[g + j], wt_dout[g + j + 1u], wt_dout[g + j + 2u], wt_dout[g + j + 3u]);
        hi += vec4<f32>(wt_dout[g + j + 4u], wt_dout[g + j + 5u], wt_dout[g + j + 6u], wt_dout[g + j + 7u]);
    }
    for (var j = full; j < p; j++) {
        tail += wt_dout[g + j];
    }
    let s = lo + hi;
    wt_terms[i] = ((s.x + s.y) + (s.z + s.w)) + tail;
}

@group(0) @binding(0) var<storage, read> wr_terms: array<f32>;
@group(0) @binding(1) var<storage, read_write> wr_dweight: array<f32>;
@group(0) @binding(2) var<storage, read_write> wr_dbias: array<f32>;
@group(0) @binding(3) var<uniform> wr_params: Params;

@compute @workgroup_size(256)
fn conv_wgrad_reduce(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat(lid, wid, nwg);
    let pr = wr_params;
    if (i >= pr.len) {
        return;
    }
    let k = pr.chans * 9u;
    let o = i / (k + 1u);
    let t = i % (k + 1u);
    var acc = 0.0;
    if (t < k) {
        acc = wr_dweight[o * k + t];
    } else {
        acc = wr_dbias[o];
    }
    let stride = pr.outs * (k + 1u);
    for (var b = 0u; b < pr.batch; b++) {
        acc += wr_terms[b * stride + i];
    }
    if (t < k) {
        wr_dweight[o * k + t] = acc;
    } else {
        wr_dbias[o] = acc;
    }
}

// dcols[b, t, p] = sum_o weight[o, t] dout[b, o, p], o = 0, 1, ..., O - 1 from 0 (overwritten).

@group(0) @binding(0) var<storage, read> cc_dout: array<f32>;
@group(0) @binding(1) var<storage, read> cc_weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> cc_dcols: array<f32>;
@group(0) @binding(3) var<uniform> cc_params: Params;

@compute @workgroup_size(256)
fn conv_dcols(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat(lid, wid, nwg);
    let pr = cc_params;
    if (i >= pr.len) {
        return;
    }
    let p = pr.h * pr.w;
    let k = pr.chans * 9u;
    let b = i / (k * p);
    let r = i % (k * p);
    let t = r / p;
    let pix = r % p;
    var acc = 0.0;
    for (var o = 0u; o < pr.outs; o++) {
        acc += cc_weight[o * k + t] * cc_dout[(b * pr.outs + o) * p + pix];
    }
    cc_dcols[i] = acc;
}

// ---------------------------------------------------------------------------------------
// ReLU: out = max(x, 0); dinp += dout where x > 0 (0 at 0, as PyTorch).

@group(0) @binding(0) var<storage, read> rf_inp: array<f32>;
@group(0) @binding(1) var<storage, read_write> rf_out: array<f32>;
@group(0) @binding(2) var<uniform> rf_params: Params;

@compute @workgroup_size(256)
fn relu_forward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat(lid, wid, nwg);
    if (i >= rf_params.len) {
        return;
    }
    let x = rf_inp[i];
    var y = 0.0;
    if (x > 0.0) {
        y = x;
    }
    rf_out[i] = y;
}

@group(0) @binding(0) var<storage, read> rb_dout: array<f32>;
@group(0) @binding(1) var<storage, read> rb_inp: array<f32>;
@group(0) @binding(2) var<storage, read_write> rb_dinp: array<f32>;
@group(0) @binding(3) var<uniform> rb_params: Params;

@compute @workgroup_size(256)
fn relu_backward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat(lid, wid, nwg);
    if (i >= rb_params.len) {
        return;
    }
    if (rb_inp[i] > 0.0) {
        rb_dinp[i] += rb_dout[i];
    }
}

// ---------------------------------------------------------------------------------------
// 2x2 max-pooling, stride 2, over `batch` planes of H x W (H / 2 x W / 2 out, rounded down).
// The window is scanned (0,0), (0,1), (1,0), (1,1) keeping the first of equal maxima (strict
// >), as the twin; argmax is the winner's index within its input plane.

@group(0) @binding(0) var<storage, read> mf_inp: array<f32>;
@group(0) @binding(1) var<storage, read_write> mf_out: array<f32>;
@group(0) @binding(2) var<storage, read_write> mf_argmax: array<u32>;
@group(0) @binding(3) var<uniform> mf_params: Params;

@compute @workgroup_size(256)
fn maxpool2_forward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let n = flat(lid, wid, nwg);
    let pr = mf_params;
    if (n >= pr.len) {
        return;
    }
    let ho = pr.h / 2u;
    let wo = pr.w / 2u;
    let plane = n / (ho * wo);
    let r = n % (ho * wo);
    let i = r / wo;
    let j = r % wo;
    let base = plane * pr.h * pr.w;
    var best = (2u * i) * pr.w + 2u * j;
    var bv = mf_inp[base + best];
    var cand = array<u32, 3>(
        (2u * i) * pr.w + 2u * j + 1u,
        (2u * i + 1u) * pr.w + 2u * j,
        (2u * i + 1u) * pr.w + 2u * j + 1u,
    );
    for (var s = 0u; s < 3u; s++) {
        let v = mf_inp[base + cand[s]];
        if (v > bv) {
            bv = v;
            best = cand[s];
        }
    }
    mf_out[n] = bv;
    mf_argmax[n] = best;
}

// dinp[plane, argmax] += dout: the windows do not overlap, so each input pixel gets at most
// one value and one invocation per output writes it.

@group(0) @binding(0) var<storage, read> mb_dout: array<f32>;
@group(0) @binding(1) var<storage, read> mb_argmax: array<u32>;
@group(0) @binding(2) var<storage, read_write> mb_dinp: array<f32>;
@group(0) @binding(3) var<uniform> mb_params: Params;

@compute @workgroup_size(256)
fn maxpool2_backward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let n = flat(lid, wid, nwg);
    let pr = mb_params;
    if (n >= pr.len) {
        return;
    }
    let plane = n / ((pr.h / 2u) * (pr.w / 2u));
    let at = plane * pr.h * pr.w + mb_argmax[n];
    mb_dinp[at] += mb_dout[n];
}

// ---------------------------------------------------------------------------------------
// Global average pooling over `batch` planes of P = h pixels (w = 1): out = (sum in order) inv;
// dinp += dout inv.

@group(0) @binding(0) var<storage, read> af_inp: array<f32>;
@group(0) @binding(1) var<storage, read_write> af_out: array<f32>;
@group(0) @binding(2) var<uniform> af_params: Params;

@compute @workgroup_size(256)
fn avgpool_forward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let n = flat(lid, wid, nwg);
    let pr = af_params;
    if (n >= pr.len) {
        return;
    }
    var acc = 0.0;
    for (var j = 0u; j < pr.h; j++) {
        acc += af_inp[n * pr.h + j];
    }
    af_out[n] = acc * pr.inv;
}

@group(0) @binding(0) var<storage, read> ab_dout: array<f32>;
@group(0) @binding(1) var<storage, read_write> ab_dinp: array<f32>;
@group(0) @binding(2) var<uniform> ab_params: Params;

@compute @workgroup_size(256)
fn avgpool_backward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat(lid, wid, nwg);
    let pr = ab_params;
    if (i >= pr.len) {
        return;
    }
    ab_dinp[i] += ab_dout[i / pr.h] * pr.inv;
}

// ---------------------------------------------------------------------------------------
// A linear layer's bias gradient: dbias[j] += sum_r dout[r, j] (`batch` rows, `outs`
// columns), the rows summed in order from 0 and then added (the twin: sebra::model's
// linear_backward).

@group(0) @binding(0) var<storage, read> cs_dout: array<f32>;
@group(0) @binding(1) var<storage, read_write> cs_dbias: array<f32>;
@group(0) @binding(2) var<uniform> cs_params: Params;

@compute @workgroup_size(256)
fn col_sums(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let j = flat(lid, wid, nwg);
    let pr = cs_params;
    if (j >= pr.len) {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < pr.batch; r++) {
        acc += cs_dout[r * pr.outs + j];
    }
    cs_dbias[j] += acc;
}

// ---------------------------------------------------------------------------------------
// SGD with momentum (torch.optim.SGD, dampening 0, no Nesterov, no weight decay; the twin:
// sebra::run::Optimizer): buf = g at the first step, else momentum buf + g; p -= lr buf.

struct SgdParams {
    len: u32,
    lr: f32,
    momentum: f32,
    first: u32,
};

@group(0) @binding(0) var<storage, read_write> sgd_p: array<f32>;
@group(0) @binding(1) var<storage, read> sgd_g: array<f32>;
@group(0) @binding(2) var<storage, read_write> sgd_buf: array<f32>;
@group(0) @binding(3) var<uniform> sgd_params: SgdParams;

@compute @workgroup_size(256)
fn sgd_momentum(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat(lid, wid, nwg);
    let a = sgd_params;
    if (i >= a.len) {
        return;
    }
    let g = sgd_g[i];
    var b = g;
    if (a.first == 0u) {
        b = a.momentum * sgd_buf[i] + g;
    }
    sgd_buf[i] = b;
    sgd_p[i] = sgd_p[i] - a.lr * b;
}
