// SwiGLU backward (the CPU twin: train::ops::swiglu_backward; the forward is elementwise.wgsl
// `swiglu`). gate, up, dout, dgate, dup are flat (N F) arrays:
//
//   s = sigmoid(g) = 1 / (1 + exp(-g))
//   dgate += dout up s (1 + g (1 - s))
//   dup   += dout g s
//
// One invocation per value, 256 per workgroup, flat index (wid.y * nwg.x + wid.x) * 256 + lid.

struct Params {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
};

@group(0) @binding(0) var<storage, read> dout: array<f32>;
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read_write> dgate: array<f32>;
@group(0) @binding(4) var<storage, read_write> dup: array<f32>;
@group(0) @binding(5) var<uniform> params: Params;

@compute @workgroup_size(256)
fn swiglu_backward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i >= params.len) {
        return;
    }
    let d = dout[i];
    let g = gate[i];
    let u = up[i];
    let s = 1.0 / (1.0 + exp(-g));
    dgate[i] += d * u * s * (1.0 + g * (1.0 - s));
    dup[i] += d * g * s;
}
