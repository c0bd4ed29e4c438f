// y = x W^T (+ b): the linear layer, x (N,K), W (O,K) row-major as nn.Linear stores its
// weight, b (O), y (N,O). f32 throughout.
//
// The same kernel serves the training backward through strides and an accumulate flag:
// x[r, k] is read at r x_row + k x_k and W[o, k] at o w_row + k w_k, so a transposed operand
// is only other strides (dX = dY W reads W^T, dW = dY^T X reads dY^T and X^T), and with
// `accumulate` y += x W^T instead of y = x W^T (gradients add into what is there). The
// linear layer is x_row = K, x_k = 1, w_row = K, w_k = 1.
//
// Tiling: a workgroup of 8 x 8 invocations owns a 64 x 64 tile of y (rows r0..r0+64 of x,
// rows o0..o0+64 of W). It walks K in steps of BK = 16: the workgroup copies the x tile
// (64 x 16) and the W tile (64 x 16) into workgroup memory (2 x 4 KiB), transposed so that
// step kk reads 64 consecutive values, then each invocation updates an 8 x 8 block of
// accumulators in registers ("register blocking": 16 loads from workgroup memory per 64
// multiply-adds). Invocation (tx, ty) owns rows ty + 8 i and columns tx + 8 j (i, j < 8),
// so adjacent invocations touch adjacent addresses on every load and store. Values outside
// x or W are loaded as 0 and outputs outside y are not written, so any N, O, K work.
// (On Mesa's lavapipe this 8 x 8 blocking ran 1.7x faster than 4 x 4 blocks on 16 x 16
// invocations: fewer gathers per multiply-add.)
//
// Order of reduction: every y[n, o] is one f32 sum over k = 0, 1, ..., K - 1 in order, then
// the bias: the CPU twin (`cpu_forward::linear`) adds in the same order, so the two differ
// only where the compiler fuses a multiply-add.

struct Params {
    n: u32,     // rows of x and y
    k: u32,     // inner dim
    o: u32,     // rows of W, columns of y
    flags: u32, // bit 0: add b; bit 1: y += (accumulate)
    x_row: u32, // strides of x (row, inner) and W (row, inner), in elements
    x_k: u32,
    w_row: u32,
    w_k: u32,
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

@compute @workgroup_size(8, 8)
fn linear(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let o0 = wid.x * TILE;
    let r0 = wid.y * TILE;
    let tx = lid.x;
    let ty = lid.y;
    // a_i = y[r0 + ty + 8 i, o0 + tx + 8 j] for j < 4, b_i for j = 4..7: 16 vec4 registers
    // (named, not an array, which some drivers keep in memory when indexed in a loop).
    var a0 = vec4<f32>(0.0); var b0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0); var b1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0); var b2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0); var b3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0); var b4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0); var b5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0); var b6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0); var b7 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < params.k; k0 += BK) {
        // 1024 values per tile, 16 per invocation; e = li + 64 s is (row e / 16, kk e % 16),
        // so 16 adjacent invocations read 16 consecutive k of one row.
        for (var s = 0u; s < 16u; s++) {
            let e = li + 64u * s;
            let r = e / BK;
            let kk = e % BK;
            let kg = k0 + kk;
            var xv = 0.0;
            if (r0 + r < params.n && kg < params.k) {
                xv = x[(r0 + r) * params.x_row + kg * params.x_k];
            }
            xs[kk * TILE + r] = xv;
            var wv = 0.0;
            if (o0 + r < params.o && kg < params.k) {
                wv = w[(o0 + r) * params.w_row + kg * params.w_k];
            }
            ws[kk * TILE + r] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let at = kk * TILE;
            let c = at + tx;
            let wl = vec4<f32>(ws[c], ws[c + 8u], ws[c + 16u], ws[c + 24u]);
            let wh = vec4<f32>(ws[c + 32u], ws[c + 40u], ws[c + 48u], ws[c + 56u]);
            let r = at + ty;
            let x0 = xs[r]; let x1 = xs[r + 8u]; let x2 = xs[r + 16u]; let x3 = xs[r + 24u];
            let x4 = xs[r + 32u]; let x5 = xs[r + 40u]; let x6 = xs[r + 48u]; let x7 = xs[r + 56u];
            a0 += x0 * wl; b0 += x0 * wh;
            a1 += x1 * wl; b1 += x1 * wh;
            a2 += x2 * wl; b2 += x2 * wh;
            a3 += x3 * wl; b3 += x3 * wh;
            a4 += x4 * wl; b4 += x4 * wh;
            a5 += x5 * wl; b5 += x5 * wh;
            a6 += x6 * wl; b6 += x6 * wh;
            a7 += x7 * wl; b7 += x7 * wh;
        }
        workgroupBarrier();
    }
    store8(r0 + ty, o0 + tx, a0, b0);
    store8(r0 + ty + 8u, o0 + tx, a1, b1);
    store8(r0 + ty + 16u, o0 + tx, a2, b2);
    store8(r0 + ty + 24u, o0 + tx, a3, b3);
    store8(r0 + ty + 32u, o0 + tx, a4, b4);
    store8(r0 + ty + 40u, o0 + tx, a5, b5);
    store8(r0 + ty + 48u, o0 + tx, a6, b6);
    store8(r0 + ty + 56u, o0 + tx, a7, b7);
}

// Writes y[r, c + 8 j] = (lo, hi)[j] (+ bias) (+ y[r, c + 8 j] when accumulating) for the
// columns inside y.
fn store8(r: u32, c: u32, lo: vec4<f32>, hi: vec4<f32>) {
    if (r >= params.n) {
        return;
    }
    for (var j = 0u; j < 8u; j++) {
        let cj = c + 8u * j;
        if (cj < params.o) {
            var v = 0.0;
            if (j < 4u) {
                v = lo[j];
            } else {
                v = hi[j - 4u];
            }
            if ((params.flags & 1u) != 0u) {
                v += bias[cj];
            }
            if ((params.flags & 2u) != 0u) {
                v += y[r * params.o + cj];
            }
            y[r * params.o + cj] = v;
        }
    }
}
