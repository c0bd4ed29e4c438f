// Elementwise kernels on flat f32 arrays of `len` values. One invocation per value,
// 256 per workgroup; the host dispatches a 2-D grid of workgroups when len / 256 exceeds
// 65535, and the flat index is (wid.y * nwg.x + wid.x) * 256 + lid.
//   swiglu:       out = silu(a) * b, silu(g) = g / (1 + exp(-g))  (the FFN's gate and up)
//   residual_add: out = a + b                                       (the residual stream)

struct Params {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
};

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

fn flat(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

@compute @workgroup_size(256)
fn swiglu(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat(lid, wid, nwg);
    if (i < params.len) {
        let g = a[i];
        out[i] = (g / (exp(-g) + 1.0)) * b[i];
    }
}

@compute @workgroup_size(256)
fn residual_add(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat(lid, wid, nwg);
    if (i < params.len) {
        out[i] = a[i] + b[i];
    }
}
