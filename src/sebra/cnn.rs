//! The bias lab's CNN ops on the CPU: paired `*_forward` / `*_backward` functions in
//! llm.c's style (the CPU twins of the WGSL kernels to come).
//!
//! Shape legend: B = batch, C = input channels, O = output channels, H x W = a feature map,
//! P = H*W its pixels, K = C*9 the taps of a 3x3 convolution. Feature maps are NCHW
//! row-major, as the images and PyTorch; a convolution's weight is (O, C, 3, 3) = (O, K), as
//! PyTorch stores it.
//!
//! Conventions (those of the training ops): a backward *adds* into its gradients (`+=`), so
//! callers zero them once per step; every output element is written by one task in a fixed
//! order, so the bits do not depend on the thread count. Generic over f32 (the lab) and f64
//! (the finite-difference checks).

use crate::train::gemm::{gemm_acc, gemm_set, Lhs, Out, Rhs};
/// The float the ops run in: the training core's (f32 for the lab, f64 for the checks).
pub use crate::train::ops::Real;
use crate::train::ops::{sum8, transpose, wide};
use rayon::prelude::*;

/// The sizes of one 3x3 convolution (padding 1, stride 1: the map keeps its size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvDims {
    pub b: usize,
    pub c: usize,
    pub o: usize,
    pub h: usize,
    pub w: usize,
}

impl ConvDims {
    /// K = C*9.
    pub fn taps(&self) -> usize {
        self.c * 9
    }
    /// P = H*W.
    pub fn pixels(&self) -> usize {
        self.h * self.w
    }
}

/// cols (B, K, P): cols[b, c*9 + ky*3 + kx, y*W + x] = inp[b, c, y+ky-1, x+kx-1], 0 outside
/// the map (zero padding 1). One task per image.
pub fn im2col_forward<F: Real>(cols: &mut [F], inp: &[F], d: ConvDims) {
    let (h, w, p, k) = (d.h, d.w, d.pixels(), d.taps());
    cols.par_chunks_mut(k * p)
        .zip(inp.par_chunks(d.c * p))
        .for_each(|(col, x)| {
            for c in 0..d.c {
                for tap in 0..9 {
                    let (ky, kx) = (tap / 3, tap % 3);
                    let row = &mut col[(c * 9 + tap) * p..(c * 9 + tap + 1) * p];
                    for y in 0..h {
                        for xo in 0..w {
                            let (yi, xi) = ((y + ky) as isize - 1, (xo + kx) as isize - 1);
                            row[y * w + xo] =
                                if yi >= 0 && xi >= 0 && (yi as usize) < h && (xi as usize) < w {
                                    x[c * p + yi as usize * w + xi as usize]
                                } else {
                                    F::ZERO
                                };
                        }
                    }
                }
            }
        });
}

/// dinp (B, C, H, W) += the transpose of im2col applied to dcols (B, K, P): every tap adds
/// its gradient back to the pixel it read. One task per image; the taps in a fixed order.
pub fn im2col_backward<F: Real>(dinp: &mut [F], dcols: &[F], d: ConvDims) {
    let (h, w, p, k) = (d.h, d.w, d.pixels(), d.taps());
    dinp.par_chunks_mut(d.c * p)
        .zip(dcols.par_chunks(k * p))
        .for_each(|(dx, col)| {
            for c in 0..d.c {
                for tap in 0..9 {
                    let (ky, kx) = (tap / 3, tap % 3);
                    let row = &col[(c * 9 + tap) * p..(c * 9 + tap + 1) * p];
                    for y in 0..h {
                        for xo in 0..w {
                            let (yi, xi) = ((y + ky) as isize - 1, (xo + kx) as isize - 1);
                            if yi >= 0 && xi >= 0 && (yi as usize) < h && (xi as usize) < w {
                                dx[c * p + yi as usize * w + xi as usize] += row[y * w + xo];
                            }
                        }
                    }
                }
            }
        });
}

/// out (B, O, P) = weight (O, K) . cols[b] (K, P) + bias (O), per image: the convolution as
/// a matmul over the im2col taps. `cols` comes from `im2col_forward` (the backward needs it).
pub fn conv3x3_forward<F: Real>(out: &mut [F], cols: &[F], weight: &[F], bias: &[F], d: ConvDims) {
    let (p, k) = (d.pixels(), d.taps());
    // Per image, out[b] (O, P) = bias, then += weight (O, K) . cols[b] (K, P), each output
    // adding its taps in order (`gemm_acc`).
    out.par_chunks_mut(d.o * p)
        .zip(cols.par_chunks(k * p))
        .for_each(|(y, col)| {
            for (plane, &b) in y.chunks_exact_mut(p).zip(bias) {
                plane.fill(b);
            }
            let w = Lhs {
                data: weight,
                rs: k,
                cs: 1,
            };
            gemm_acc(Out::rows_of(y, p), w, Rhs { data: col, ld: p }, k);
        });
}

/// Given dout (B, O, P): dweight (O, K) += sum_b dout[b] . cols[b]^T, dbias (O) += sum_b,p
/// dout, and dcols (B, K, P) = weight^T . dout[b] (overwritten: it is scratch for
/// `im2col_backward`). Each image's weight-gradient term is its own product (its pixels
/// added in order from zero, `gemm_set`, one task per image), then the terms are added to
/// dweight image by image in order (one task per weight row), as the GPU twin does.
pub fn conv3x3_backward<F: Real>(
    dcols: &mut [F],
    dweight: &mut [F],
    dbias: &mut [F],
    dout: &[F],
    cols: &[F],
    weight: &[F],
    d: ConvDims,
) {
    let mut terms = Vec::new();
    conv3x3_backward_in(&mut terms, dcols, dweight, dbias, dout, cols, weight, d);
}

/// `conv3x3_backward` with the images' weight-gradient terms in `terms` (resized as needed,
/// every element overwritten), so that a training loop reuses one buffer.
#[allow(clippy::too_many_arguments)]
pub fn conv3x3_backward_in<F: Real>(
    terms: &mut Vec<F>,
    dcols: &mut [F],
    dweight: &mut [F],
    dbias: &mut [F],
    dout: &[F],
    cols: &[F],
    weight: &[F],
    d: ConvDims,
) {
    let (p, k) = (d.pixels(), d.taps());
    if terms.len() != d.b * d.o * k {
        terms.clear();
        terms.resize(d.b * d.o * k, F::ZERO);
    }
    let terms = &mut terms[..];
    terms
        .par_chunks_mut(d.o * k)
        .zip(dout.par_chunks(d.o * p).zip(cols.par_chunks(k * p)))
        .for_each(|(term, (g, col))| {
            // term (O, K) = dout[b] (O, P) . cols[b]^T, cols[b] transposed to (P, K).
            let col_t = transpose(col, k, p);
            let g = Lhs {
                data: g,
                rs: p,
                cs: 1,
            };
            gemm_set(
                Out::rows_of(term, k),
                g,
                Rhs {
                    data: &col_t,
                    ld: k,
                },
                p,
            );
        });
    dweight
        .par_chunks_mut(k)
        .zip(dbias.par_iter_mut())
        .enumerate()
        .for_each(|(o, (dw, db))| {
            for b in 0..d.b {
                for (v, &t) in dw.iter_mut().zip(&terms[(b * d.o + o) * k..][..k]) {
                    *v += t;
                }
                *db += wide(
                    #[inline(always)]
                    || sum8(&dout[(b * d.o + o) * p..][..p]),
                );
            }
        });
    // dcols[b] (K, P) = weight^T (K, O) . dout[b] (O, P), each element adding its output
    // channels in order from zero (`gemm_acc`).
    dcols
        .par_chunks_mut(k * p)
        .zip(dout.par_chunks(d.o * p))
        .for_each(|(dc, g)| {
            let wt = Lhs {
                data: weight,
                rs: 1,
                cs: k,
            };
            gemm_set(Out::rows_of(dc, p), wt, Rhs { data: g, ld: p }, d.o);
        });
}

/// out = max(inp, 0), elementwise.
pub fn relu_forward<F: Real>(out: &mut [F], inp: &[F]) {
    out.par_iter_mut()
        .zip(inp.par_iter())
        .for_each(|(y, &x)| *y = if x > F::ZERO { x } else { F::ZERO });
}

/// dinp += dout where inp > 0 (the subgradient 0 at 0, as PyTorch).
pub fn relu_backward<F: Real>(dinp: &mut [F], dout: &[F], inp: &[F]) {
    dinp.par_iter_mut()
        .zip(dout.par_iter().zip(inp.par_iter()))
        .for_each(|(dx, (&g, &x))| {
            if x > F::ZERO {
                *dx += g;
            }
        });
}

/// 2x2 max-pooling, stride 2, over (B*C) planes of H x W: out (B*C, H/2, W/2) (rounded down,
/// as PyTorch: an odd last row or column is dropped); `argmax` keeps, per output, the index
/// of the winning pixel within its input plane (the first of equal maxima) for the backward.
pub fn maxpool2_forward<F: Real>(out: &mut [F], argmax: &mut [u32], inp: &[F], h: usize, w: usize) {
    let (ho, wo) = (h / 2, w / 2);
    out.par_chunks_mut(ho * wo)
        .zip(argmax.par_chunks_mut(ho * wo))
        .zip(inp.par_chunks(h * w))
        .for_each(|((y, am), x)| {
            for i in 0..ho {
                for j in 0..wo {
                    let mut best = (2 * i) * w + 2 * j;
                    for idx in [
                        (2 * i) * w + 2 * j + 1,
                        (2 * i + 1) * w + 2 * j,
                        (2 * i + 1) * w + 2 * j + 1,
                    ] {
                        if x[idx] > x[best] {
                            best = idx;
                        }
                    }
                    y[i * wo + j] = x[best];
                    am[i * wo + j] = best as u32;
                }
            }
        });
}

/// dinp (B*C, H, W) += dout routed to each window's winner.
pub fn maxpool2_backward<F: Real>(dinp: &mut [F], dout: &[F], argmax: &[u32], h: usize, w: usize) {
    let (ho, wo) = (h / 2, w / 2);
    dinp.par_chunks_mut(h * w)
        .zip(dout.par_chunks(ho * wo).zip(argmax.par_chunks(ho * wo)))
        .for_each(|(dx, (g, am))| {
            for (&gv, &idx) in g.iter().zip(am) {
                dx[idx as usize] += gv;
            }
        });
}

/// Global average pooling: out (B*C) = the mean of each plane of P pixels.
pub fn avgpool_forward<F: Real>(out: &mut [F], inp: &[F], p: usize) {
    let inv = F::of(1.0 / p as f64);
    out.par_iter_mut()
        .zip(inp.par_chunks(p))
        .for_each(|(y, x)| {
            let mut acc = F::ZERO;
            x.iter().for_each(|&v| acc += v);
            *y = acc * inv;
        });
}

/// dinp (B*C, P) += dout / P.
pub fn avgpool_backward<F: Real>(dinp: &mut [F], dout: &[F], p: usize) {
    let inv = F::of(1.0 / p as f64);
    dinp.par_chunks_mut(p)
        .zip(dout.par_iter())
        .for_each(|(dx, &g)| dx.iter_mut().for_each(|v| *v += g * inv));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn uniform(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
        (0..n)
            .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
            .collect()
    }

    /// L = sum(f(x) * r) for a fixed random r; its gradient by central differences in f64.
    fn numeric_grad(x: &[f64], f: &dyn Fn(&[f64]) -> f64) -> Vec<f64> {
        let eps = 1e-6;
        (0..x.len())
            .map(|i| {
                let mut a = x.to_vec();
                a[i] += eps;
                let up = f(&a);
                a[i] -= 2.0 * eps;
                (up - f(&a)) / (2.0 * eps)
            })
            .collect()
    }

    fn close(analytic: &[f64], numeric: &[f64], what: &str) {
        assert_eq!(analytic.len(), numeric.len());
        for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
            assert!(
                (a - n).abs() <= 1e-7 * (1.0 + n.abs()),
                "{what}[{i}]: analytic {a}, numeric {n}"
            );
        }
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Awkward sizes: odd H and W (padding on every side, the pool dropping a row and a
    /// column), C and O not powers of two.
    const D: ConvDims = ConvDims {
        b: 2,
        c: 3,
        o: 4,
        h: 5,
        w: 7,
    };

    fn conv(x: &[f64], wt: &[f64], bias: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let mut cols = vec![0.0; D.b * D.taps() * D.pixels()];
        im2col_forward(&mut cols, x, D);
        let mut out = vec![0.0; D.b * D.o * D.pixels()];
        conv3x3_forward(&mut out, &cols, wt, bias, D);
        (out, cols)
    }

    #[test]
    fn conv3x3_backward_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let x = uniform(&mut rng, D.b * D.c * D.pixels());
        let wt = uniform(&mut rng, D.o * D.taps());
        let bias = uniform(&mut rng, D.o);
        let r = uniform(&mut rng, D.b * D.o * D.pixels());
        let (_, cols) = conv(&x, &wt, &bias);
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; wt.len()], vec![0.0; D.o]);
        let mut dcols = vec![0.0; cols.len()];
        conv3x3_backward(&mut dcols, &mut dw, &mut db, &r, &cols, &wt, D);
        im2col_backward(&mut dx, &dcols, D);
        close(
            &dx,
            &numeric_grad(&x, &|x| dot(&conv(x, &wt, &bias).0, &r)),
            "dinp",
        );
        close(
            &dw,
            &numeric_grad(&wt, &|w| dot(&conv(&x, w, &bias).0, &r)),
            "dweight",
        );
        close(
            &db,
            &numeric_grad(&bias, &|b| dot(&conv(&x, &wt, b).0, &r)),
            "dbias",
        );
    }

    #[test]
    fn relu_and_pools_backward_match_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let (planes, h, w) = (5, 5, 7);
        let x = uniform(&mut rng, planes * h * w);
        let r = uniform(&mut rng, planes * h * w);
        let relu = |x: &[f64]| {
            let mut y = vec![0.0; x.len()];
            relu_forward(&mut y, x);
            y
        };
        let mut dx = vec![0.0; x.len()];
        relu_backward(&mut dx, &r, &x);
        close(&dx, &numeric_grad(&x, &|x| dot(&relu(x), &r)), "relu");

        let pooled = planes * (h / 2) * (w / 2);
        let rp = &r[..pooled];
        let pool = |x: &[f64]| {
            let (mut y, mut am) = (vec![0.0; pooled], vec![0u32; pooled]);
            maxpool2_forward(&mut y, &mut am, x, h, w);
            (y, am)
        };
        let (_, am) = pool(&x);
        let mut dx = vec![0.0; x.len()];
        maxpool2_backward(&mut dx, rp, &am, h, w);
        close(&dx, &numeric_grad(&x, &|x| dot(&pool(x).0, rp)), "maxpool");

        let rg = &r[..planes];
        let gap = |x: &[f64]| {
            let mut y = vec![0.0; planes];
            avgpool_forward(&mut y, x, h * w);
            y
        };
        let mut dx = vec![0.0; x.len()];
        avgpool_backward(&mut dx, rg, h * w);
        close(&dx, &numeric_grad(&x, &|x| dot(&gap(x), rg)), "avgpool");
    }

    /// The forward ops in f32 against candle's conv2d, max_pool2d and mean, and the conv's
    /// backward against candle's autograd.
    #[test]
    fn f32_ops_match_candle() {
        use candle_core::{Device, Tensor, Var};
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        let x = f(uniform(&mut rng, D.b * D.c * D.pixels()));
        let wt = f(uniform(&mut rng, D.o * D.taps()));
        let bias = f(uniform(&mut rng, D.o));
        let r = f(uniform(&mut rng, D.b * D.o * D.pixels()));
        let mut cols = vec![0f32; D.b * D.taps() * D.pixels()];
        im2col_forward(&mut cols, &x, D);
        let mut out = vec![0f32; D.b * D.o * D.pixels()];
        conv3x3_forward(&mut out, &cols, &wt, &bias, D);

        let dev = Device::Cpu;
        let xv = Var::from_vec(x.clone(), (D.b, D.c, D.h, D.w), &dev).unwrap();
        let wv = Var::from_vec(wt.clone(), (D.o, D.c, 3, 3), &dev).unwrap();
        let bv = Var::from_vec(bias.clone(), (1, D.o, 1, 1), &dev).unwrap();
        let y = xv
            .conv2d(&wv, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&bv)
            .unwrap();
        let want: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let near = |a: &[f32], b: &[f32], what: &str| {
            assert_eq!(a.len(), b.len());
            for (i, (p, q)) in a.iter().zip(b).enumerate() {
                assert!(
                    (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                    "{what}[{i}]: {p} vs candle {q}"
                );
            }
        };
        near(&out, &want, "conv");
        let rt = Tensor::from_vec(r.clone(), (D.b, D.o, D.h, D.w), &dev).unwrap();
        let grads = (y * rt).unwrap().sum_all().unwrap().backward().unwrap();
        let (mut dx, mut dw, mut db) = (vec![0f32; x.len()], vec![0f32; wt.len()], vec![0f32; D.o]);
        let mut dcols = vec![0f32; cols.len()];
        conv3x3_backward(&mut dcols, &mut dw, &mut db, &r, &cols, &wt, D);
        im2col_backward(&mut dx, &dcols, D);
        let g = |v: &Var| -> Vec<f32> {
            grads
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        near(&dx, &g(&xv), "dinp");
        near(&dw, &g(&wv), "dweight");
        near(&db, &g(&bv), "dbias");

        let (mut pooled, mut am) = (vec![0f32; D.b * D.o * 2 * 3], vec![0u32; D.b * D.o * 6]);
        maxpool2_forward(&mut pooled, &mut am, &out, D.h, D.w);
        let t = Tensor::from_vec(out.clone(), (D.b, D.o, D.h, D.w), &dev).unwrap();
        let want: Vec<f32> = t
            .max_pool2d(2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        near(&pooled, &want, "maxpool");
        let mut gap = vec![0f32; D.b * D.o];
        avgpool_forward(&mut gap, &out, D.pixels());
        let want: Vec<f32> = t
            .mean((2, 3))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        near(&gap, &want, "avgpool");
    }
}
