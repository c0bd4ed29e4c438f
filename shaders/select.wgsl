// Wanda masks: which weights of a linear layer W (rows, cols) are pruned.
//
//   score[r, j] = |W[r, j]| * sqrt_s[j]
//
// sqrt_s = sqrt(scaler_row) is computed on the host, so the kernel only multiplies: one
// correctly rounded f32 product, the same bits as the CPU's `wanda_scores` (the host sends
// only inputs where neither side can meet a subnormal, see `select::wanda_mask`). Scores are
// compared by the key
//   key(s) = bits(s) ^ 0x80000000  (sign clear),   ~bits(s)  (sign set)
// whose unsigned order is f32::total_cmp's order, and ties go to the lower column: the
// pruned set is the first k of a stable ascending sort, bit for bit `masks::wanda_mask`.
//
// The mask is packed 32 flags a word: weight (r, j) is bit (r cols + j) % 32 of word
// (r cols + j) / 32 (set = pruned; rows may share a word, hence atomicOr).
//
//   wanda_unstructured: the k lowest of each row. One workgroup of 256 per row finds the
//     k-th smallest key by radix select (4 passes of 8 bits, most significant first: a
//     256-bin histogram of the keys that share the digits found so far, and the bin where
//     the running count reaches the wanted rank). Then every key below it is pruned, and of
//     the keys equal to it the first `want` in column order (a prefix count over chunks of
//     256 columns). Any row length; 2 KiB of workgroup memory.
//   wanda_n_m: in each group of M consecutive columns of a row, the N lowest. One invocation
//     per group ranks each member against the others (O(M^2), M is small: 2:4, 4:8).

struct Params {
    rows: u32,
    cols: u32,
    k: u32, // unstructured: pruned per row
    n: u32, // N:M
    m: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
};

@group(0) @binding(0) var<storage, read> w: array<f32>;
@group(0) @binding(1) var<storage, read> sqrt_s: array<f32>;
@group(0) @binding(2) var<storage, read_write> mask: array<atomic<u32>>;
@group(0) @binding(3) var<uniform> params: Params;

const WG: u32 = 256u;

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> scan: array<u32, 256>;
var<workgroup> choice: array<u32, 2>;

fn key_of(r: u32, j: u32) -> u32 {
    let s = abs(w[r * params.cols + j]) * sqrt_s[j];
    let bits = bitcast<u32>(s);
    return select(bits ^ 0x80000000u, ~bits, (bits >> 31u) == 1u);
}

fn prune(r: u32, j: u32) {
    let bit = r * params.cols + j;
    atomicOr(&mask[bit >> 5u], 1u << (bit & 31u));
}

@compute @workgroup_size(256)
fn wanda_unstructured(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= params.rows || params.k == 0u) {
        return;
    }
    let cols = params.cols;
    // The k-th smallest key so far: its leading digits (`prefix`, under `hi`) and its rank
    // (1-based) among the keys that share them (`want`).
    var prefix = 0u;
    var want = params.k;
    for (var digit_pass = 0u; digit_pass < 4u; digit_pass++) {
        let shift = 24u - 8u * digit_pass;
        let hi = select(0u, 0xFFFFFFFFu << (shift + 8u), digit_pass > 0u);
        atomicStore(&hist[lid], 0u);
        workgroupBarrier();
        for (var j = lid; j < cols; j += WG) {
            let key = key_of(row, j);
            if ((key & hi) == prefix) {
                atomicAdd(&hist[(key >> shift) & 255u], 1u);
            }
        }
        workgroupBarrier();
        if (lid == 0u) {
            var below = 0u;
            var digit = 255u;
            for (var b = 0u; b < 256u; b++) {
                let c = atomicLoad(&hist[b]);
                if (below + c >= want) {
                    digit = b;
                    break;
                }
                below += c;
            }
            choice[0] = prefix | (digit << shift);
            choice[1] = want - below;
        }
        workgroupBarrier();
        prefix = choice[0];
        want = choice[1];
    }
    // prefix is now the k-th smallest key; prune every key below it and the first `want`
    // keys equal to it, in column order.
    var before = 0u; // keys equal to the threshold in earlier chunks
    for (var c0 = 0u; c0 < cols; c0 += WG) {
        let j = c0 + lid;
        var key = 0xFFFFFFFFu;
        var eq = 0u;
        if (j < cols) {
            key = key_of(row, j);
            eq = u32(key == prefix);
        }
        scan[lid] = eq;
        workgroupBarrier();
        // Inclusive prefix sum (Hillis-Steele): after the step with offset `off`, scan[i]
        // holds the sum of eq over (i - 2 off, i].
        for (var off = 1u; off < WG; off *= 2u) {
            var add = 0u;
            if (lid >= off) {
                add = scan[lid - off];
            }
            workgroupBarrier();
            scan[lid] += add;
            workgroupBarrier();
        }
        let rank = before + scan[lid] - eq;
        if (j < cols && (key < prefix || (eq == 1u && rank < want))) {
            prune(row, j);
        }
        before += scan[WG - 1u];
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn wanda_n_m(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let g = (wid.y * nwg.x + wid.x) * WG + lid;
    let per_row = params.cols / params.m;
    if (g >= params.rows * per_row) {
        return;
    }
    let row = g / per_row;
    let c0 = (g % per_row) * params.m;
    for (var i = 0u; i < params.m; i++) {
        let ki = key_of(row, c0 + i);
        var rank = 0u;
        for (var j = 0u; j < params.m; j++) {
            let kj = key_of(row, c0 + j);
            rank += u32(kj < ki || (kj == ki && j < i));
        }
        if (rank < params.n) {
            prune(row, c0 + i);
        }
    }
}
