//! The sparse linear product (`compute::sparse`) against an independent reference: a plain
//! f64 triple loop over the dense matrix, on seeded random inputs with awkward sizes (token
//! counts around the 64-token panel, rows and columns that are not multiples of anything)
//! and densities 0, 0.3 (unstructured), 0.5 (2:4) and 1. Each output must lie within
//! 1e-5 x sum_k |W[o][k] x[t][k]| of the f64 sum, for each copy of the inner loop (the
//! portable one, and AVX2 on x86_64, where a CPU without AVX2 fails the tests).

use layerlab::compute::sparse::{Kernel, SparseRows};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TOL: f64 = 1e-5;

/// Uniform in [-1, 1).
fn unit(rng: &mut ChaCha8Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 / 8_388_608.0 - 1.0
}

#[derive(Clone, Copy, Debug)]
enum Pattern {
    /// Each weight kept with this probability.
    Unstructured(f64),
    /// 2 kept of every 4 consecutive columns (a row's last, shorter group keeps up to 2).
    TwoFour,
}

/// A `[rows, cols]` weight with the pattern's zeros (some of them -0.0) and nonzeros in
/// [-1, 1) \ {0}.
fn weight(seed: u64, rows: usize, cols: usize, pattern: Pattern) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let nonzero = |rng: &mut ChaCha8Rng| loop {
        let v = unit(rng);
        if v != 0.0 {
            return v;
        }
    };
    let zero = |rng: &mut ChaCha8Rng| if rng.next_u32() & 1 == 0 { 0.0 } else { -0.0 };
    let mut w = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        match pattern {
            Pattern::Unstructured(d) => {
                for _ in 0..cols {
                    let keep = (rng.next_u32() as f64) < d * 4_294_967_296.0;
                    w.push(if keep {
                        nonzero(&mut rng)
                    } else {
                        zero(&mut rng)
                    });
                }
            }
            Pattern::TwoFour => {
                for g in (0..cols).step_by(4) {
                    let len = (cols - g).min(4);
                    // Two distinct kept positions out of `len` (all of them when len <= 2).
                    let a = rng.next_u32() as usize % len;
                    let b = (a + 1 + rng.next_u32() as usize % len.max(2).saturating_sub(1)) % len;
                    for j in 0..len {
                        let keep = len <= 2 || j == a || j == b;
                        w.push(if keep {
                            nonzero(&mut rng)
                        } else {
                            zero(&mut rng)
                        });
                    }
                }
            }
        }
    }
    w
}

/// (f64 sums, f64 sums of |terms|) of `x (n, cols) W^T`, straight from the dense matrix.
fn reference(w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0f64; n * rows];
    let mut scale = vec![0f64; n * rows];
    for t in 0..n {
        for o in 0..rows {
            let (mut s, mut a) = (0f64, 0f64);
            for k in 0..cols {
                let p = w[o * cols + k] as f64 * x[t * cols + k] as f64;
                s += p;
                a += p.abs();
            }
            y[t * rows + o] = s;
            scale[t * rows + o] = a;
        }
    }
    (y, scale)
}

/// The copies of the loop this target compiles, each of which must be checked: the portable
/// one everywhere, the AVX2 one on x86_64. An x86_64 CPU without AVX2 fails here, as a
/// missing GPU adapter fails the kernel tests: the AVX2 copy would otherwise go unchecked
/// while the tests pass.
fn kernels() -> Vec<Kernel> {
    let compiled: &[Kernel] = if cfg!(target_arch = "x86_64") {
        &[Kernel::Portable, Kernel::Avx2]
    } else {
        &[Kernel::Portable]
    };
    for k in compiled {
        assert!(
            k.is_available(),
            "this CPU cannot run the {k:?} copy of the sparse loop, so it cannot be checked; \
             run the tests on an x86_64 CPU with AVX2"
        );
    }
    eprintln!("sparse loop copies checked: {compiled:?}");
    compiled.to_vec()
}

#[test]
fn matches_f64_reference_on_awkward_shapes() {
    let patterns = [
        Pattern::Unstructured(0.0),
        Pattern::Unstructured(0.3),
        Pattern::TwoFour,
        Pattern::Unstructured(1.0),
    ];
    let kernels = kernels();
    let mut seed = 0;
    let mut checked = vec![0usize; kernels.len()];
    for &rows in &[1, 5, 577] {
        for &cols in &[1, 3, 129, 1537] {
            for &pattern in &patterns {
                seed += 1;
                let w = weight(seed, rows, cols, pattern);
                let expected_nnz = w.iter().filter(|&&v| v != 0.0).count();
                let s = SparseRows::from_dense(&w, rows, cols).unwrap();
                assert_eq!(s.nnz(), expected_nnz, "{rows}x{cols} {pattern:?}");
                if let Pattern::Unstructured(d) = pattern {
                    if d == 0.0 || d == 1.0 {
                        assert_eq!(s.density(), d, "{rows}x{cols} {pattern:?}");
                    }
                }
                for &n in &[1, 7, 63, 64, 65, 257] {
                    let mut rng = ChaCha8Rng::seed_from_u64(1000 + seed * 10 + n as u64);
                    let x: Vec<f32> = (0..n * cols).map(|_| unit(&mut rng)).collect();
                    let (want, scale) = reference(&w, rows, cols, &x, n);
                    for (ki, &k) in kernels.iter().enumerate() {
                        let mut got = vec![f32::NAN; n * rows];
                        s.matmul_t_with(&x, n, &mut got, k).unwrap();
                        assert_eq!(got.len(), n * rows);
                        for (i, (&g, (&r, &a))) in
                            got.iter().zip(want.iter().zip(&scale)).enumerate()
                        {
                            let err = (g as f64 - r).abs();
                            assert!(
                                err <= TOL * a,
                                "{k:?} n={n} {rows}x{cols} {pattern:?}: y[{}][{}] = {g}, f64 {r} (|terms| {a})",
                                i / rows,
                                i % rows
                            );
                        }
                        checked[ki] += got.len();
                    }
                }
            }
        }
    }
    // Every copy saw every shape: 3 x 4 x 4 weights, each times 6 token counts.
    let outputs: usize =
        [1, 5, 577].iter().sum::<usize>() * 4 * 4 * [1, 7, 63, 64, 65, 257].iter().sum::<usize>();
    assert_eq!(
        checked,
        vec![outputs; kernels.len()],
        "outputs checked per copy {kernels:?}"
    );
}

/// The AVX2 copy of the loop and the portable one (what the browser's wasm runs) give the
/// same bits, on a panel-straddling shape: same products, same order. x86_64 only, the one
/// target with an AVX2 copy; there a CPU without AVX2 fails (`kernels`).
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_and_portable_kernels_agree() {
    assert_eq!(kernels(), [Kernel::Portable, Kernel::Avx2]);
    let (rows, cols, n) = (577, 1537, 257);
    for (seed, pattern) in [(7, Pattern::Unstructured(0.3)), (8, Pattern::TwoFour)] {
        let w = weight(seed, rows, cols, pattern);
        let s = SparseRows::from_dense(&w, rows, cols).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
        let x: Vec<f32> = (0..n * cols).map(|_| unit(&mut rng)).collect();
        let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
        s.matmul_t_with(&x, n, &mut a, Kernel::Portable).unwrap();
        s.matmul_t_with(&x, n, &mut b, Kernel::Avx2).unwrap();
        let differ = a
            .iter()
            .zip(&b)
            .filter(|(p, q)| p.to_bits() != q.to_bits())
            .count();
        assert_eq!(differ, 0, "{pattern:?}: {differ} outputs differ");
        // The default entry point picks the AVX2 copy here.
        assert_eq!(s.matmul_t(&x, n).unwrap(), b);
    }
}

#[test]
fn two_four_pattern_has_half_density() {
    let w = weight(3, 64, 576, Pattern::TwoFour);
    let s = SparseRows::from_dense(&w, 64, 576).unwrap();
    assert_eq!(s.nnz(), 64 * 576 / 2);
    assert_eq!(s.density(), 0.5);
    // 4 + 1 bytes per nonzero, plus 4 per (column block, row) and one more.
    assert_eq!(s.bytes(), s.nnz() * 5 + (9 * 64 + 1) * 4);
}

#[test]
fn wrong_x_length_is_an_error() {
    let w = weight(4, 5, 129, Pattern::Unstructured(0.3));
    let s = SparseRows::from_dense(&w, 5, 129).unwrap();
    let x = vec![0.5f32; 7 * 129];
    assert!(s.matmul_t(&x, 7).is_ok());
    for n in [0, 6, 8] {
        let e = s.matmul_t(&x, n).unwrap_err();
        assert!(e.to_string().contains("129"), "{e}");
    }
    assert!(s.matmul_t(&x[1..], 7).is_err());
    let mut y = vec![0f32; 7 * 5];
    assert!(s.matmul_t_into(&x, 7, &mut y[1..]).is_err());
    assert!(s.matmul_t_into(&x, 7, &mut y).is_ok());
    assert!(SparseRows::from_dense(&w[1..], 5, 129).is_err());
}

/// Rows whose nonzeros all lie in one block of 64 columns (others empty, the first block
/// included), over several panels whose buffers are reused: outputs must not keep anything
/// from a previous panel or row.
#[test]
fn rows_empty_in_some_column_blocks() {
    for (rows, cols, n) in [(7usize, 150usize, 200usize), (301, 200, 130)] {
        let mut rng = ChaCha8Rng::seed_from_u64(rows as u64);
        let blocks = cols.div_ceil(64);
        let mut w = vec![0f32; rows * cols];
        for o in 0..rows {
            // Row o: every 3rd column of block o % (blocks + 1); none at all for the last.
            let b = o % (blocks + 1);
            for k in (b * 64..cols.min(b * 64 + 64)).step_by(3) {
                w[o * cols + k] = unit(&mut rng);
            }
        }
        let x: Vec<f32> = (0..n * cols).map(|_| unit(&mut rng)).collect();
        let s = SparseRows::from_dense(&w, rows, cols).unwrap();
        let (want, scale) = reference(&w, rows, cols, &x, n);
        for k in kernels() {
            let mut got = vec![f32::NAN; n * rows];
            s.matmul_t_with(&x, n, &mut got, k).unwrap();
            for (i, (&g, (&r, &a))) in got.iter().zip(want.iter().zip(&scale)).enumerate() {
                assert!(
                    (g as f64 - r).abs() <= TOL * a,
                    "{k:?} {rows}x{cols} n={n}: y[{}][{}] = {g}, f64 {r}",
                    i / rows,
                    i % rows
                );
            }
        }
    }
}
