// y = x W^T (+ b): the linear layer, x (N,K), W (O,K) row-major as nn.Linear stores its
// weight, b (O), y (N,O). f32 throughout.
//
// Tiling: a workgroup of 16 x 16 invocations owns a 64 x 64 tile of y (rows r0..r0+64 of x,
// rows o0..o0+64 of W). It walks K in steps of BK = 16: the workgroup copies the x tile
// (64 x 16) and the W tile (64 x 16) into workgroup memory (2 x 4 KiB), transposed so that
// step kk reads 64 consecutive values, then each invocation updates a 4 x 4 block of
// accumulators in registers ("register blocking": 8 loads from workgroup memory per 16
// multiply-adds). Invocation (tx, ty) owns rows ty + 16 i and columns tx + 16 j
// (i, j < 4), so adjacent invocations touch adjacent addresses on every load and store.
// Values outside x or W are loaded as 0 and outputs outside y are not written, so any N,
// O, K work.
//
// Order of reduction: every y[n, o] is one f32 sum over k = 0, 1, ..., K - 1 in order, then
// the bias: the CPU twin (`cpu_forward::linear`) adds in the same order, so the two differ
// only where the compiler fuses a multiply-add.

struct Params {
    n: u32,        // rows of x and y
    k: u32,        // inner dim
    o: u32,        // rows of W, columns of y
    has_bias: u32, // 1: add b
};

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;

const TILE: u32 = 64u;
const BK: u32 = 16u;

// xs[kk * TILE + r] = x[r0 + r, k0 + kk]; ws likewise for W.
var<workgroup> xs: array<f32, 1024>;
var<workgroup> ws: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn linear(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let o0 = wid.x * TILE;
    let r0 = wid.y * TILE;
    let tx = lid.x;
    let ty = lid.y;
    // acc_i[j] = y[r0 + ty + 16 i, o0 + tx + 16 j]: four vec4 registers (no arrays, which
    // some drivers keep in memory when indexed in a loop).
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < params.k; k0 += BK) {
        // 1024 values per tile, 4 per invocation; e = li + 256 s is (row e / 16, kk e % 16),
        // so 16 adjacent invocations read 16 consecutive k of one row.
        for (var s = 0u; s < 4u; s++) {
            let e = li + 256u * s;
            let r = e / BK;
            let kk = e % BK;
            let kg = k0 + kk;
            var xv = 0.0;
            if (r0 + r < params.n && kg < params.k) {
                xv = x[(r0 + r) * params.k + kg];
            }
            xs[kk * TILE + r] = xv;
            var wv = 0.0;
            if (o0 + r < params.o && kg < params.k) {
                wv = w[(o0 + r) * params.k + kg];
            }
            ws[kk * TILE + r] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let at = kk * TILE;
            let b = vec4<f32>(ws[at + tx], ws[at + tx + 16u], ws[at + tx + 32u], ws[at + tx + 48u]);
            acc0 += xs[at + ty] * b;
            acc1 += xs[at + ty + 16u] * b;
            acc2 += xs[at + ty + 32u] * b;
            acc3 += xs[at + ty + 48u] * b;
        }
        workgroupBarrier();
    }
    store(r0 + ty, o0 + tx, acc0);
    store(r0 + ty + 16u, o0 + tx, acc1);
    store(r0 + ty + 32u, o0 + tx, acc2);
    store(r0 + ty + 48u, o0 + tx, acc3);
}

// Writes y[r, c + 16 j] = acc[j] (+ bias) for the columns inside y.
fn store(r: u32, c: u32, acc: vec4<f32>) {
    if (r >= params.n) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let cj = c + 16u * j;
        if (cj < params.o) {
            var v = acc[j];
            if (params.has_bias == 1u) {
                v += bias[cj];
            }
            y[r * params.o + cj] = v;
        }
    }
}
