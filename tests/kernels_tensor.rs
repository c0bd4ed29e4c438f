//! The GPU tensor layer on the GPU wgpu finds (Mesa's lavapipe in CI; a missing adapter
//! fails): the buffer ops (shaders/buffer_ops.wgsl) against their CPU twins and an f64
//! reference, on awkward sizes and offsets (not multiples of the 256-invocation workgroups,
//! views at odd offsets, more than 65535 workgroups' worth); the pool's reuse across steps;
//! reading back chosen tensors in one submission; views bound by kernels.
//!
//! Tolerances: fill and copy move bits and must be exact; accumulate with scale 1 is one f32
//! add and must be exact; with another scale the kernel may fuse the multiply-add, so each
//! value is within 1 ulp of |acc| + |scale b| of the f64 result.

mod common;

use common::{gpu, uniform};
use layerlab::compute::{cpu_forward, DType, Matrix, Recorder};

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    pollster::block_on(f)
}

const SIZES: &[usize] = &[1, 7, 257, 65_537, 100_003];

#[test]
fn fill_and_copy_match_cpu_twins_exactly() {
    let gpu = gpu();
    for (i, &n) in SIZES.iter().enumerate() {
        let x = uniform(10 + i as u64, n, -4.0, 4.0);
        // A view that starts and ends at odd offsets where the tensor is long enough.
        let (start, len) = if n > 8 { (3, n - 8) } else { (0, n) };
        let mut rec = Recorder::new(&gpu).unwrap();
        let t = rec.upload_f32(&x, &[n]).unwrap();
        let view = t.view(start, &[len]).unwrap();
        rec.fill(&view, 2.5).unwrap();
        let got = run(rec.read(&t)).unwrap();
        let mut twin = x.clone();
        cpu_forward::fill(&mut twin[start..start + len], 2.5);
        assert_eq!(got, twin, "fill a view of {len} at {start} in [{n}]");
        rec.zero(&t).unwrap();
        assert!(run(rec.read(&t)).unwrap().iter().all(|&v| v.to_bits() == 0));

        // Strided copy: `rows` rows of `cols` from a [rows, cols + 3] source at offset 1 into
        // a [rows, cols + 5] destination at offset 2.
        let cols = (n / 7).max(1);
        let rows = n.div_ceil(cols).min(9);
        let src = uniform(20 + i as u64, rows * (cols + 3) + 1, -1.0, 1.0);
        let dst0 = uniform(30 + i as u64, rows * (cols + 5) + 2, 5.0, 6.0);
        let s = rec.upload_f32(&src, &[src.len()]).unwrap();
        let d = rec.upload_f32(&dst0, &[dst0.len()]).unwrap();
        rec.copy_rows(&s, 1, cols + 3, &d, 2, cols + 5, rows, cols)
            .unwrap();
        let got = run(rec.read(&d)).unwrap();
        let mut twin = dst0.clone();
        cpu_forward::copy_rows(&src, 1, cols + 3, &mut twin, 2, cols + 5, rows, cols);
        assert_eq!(got, twin, "copy_rows {rows} x {cols}");
        // A flat copy between views.
        let a = rec.upload_f32(&x, &[n]).unwrap();
        let b = rec.zeros(&[n + 3], DType::F32).unwrap();
        rec.copy(&a, &b.view(3, &[n]).unwrap()).unwrap();
        let got = run(rec.read(&b)).unwrap();
        assert_eq!(&got[..3], &[0.0; 3]);
        assert_eq!(&got[3..], &x[..], "copy [{n}]");
        run(rec.finish()).unwrap();
    }
    // u32 (token ids) go up, through a copy and back bit for bit.
    let ids: Vec<u32> = (0..1001u32)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();
    let mut rec = Recorder::new(&gpu).unwrap();
    let t = rec.upload_u32(&ids, &[7, 143]).unwrap();
    let u = rec.output(&[1001], DType::U32).unwrap();
    rec.copy(&t, &u).unwrap();
    assert_eq!(run(rec.read_u32(&u)).unwrap(), ids);
}

#[test]
fn accumulate_matches_cpu_twin_and_f64() {
    let gpu = gpu();
    for (i, &n) in SIZES.iter().enumerate() {
        let acc = uniform(40 + i as u64, n, -3.0, 3.0);
        let b = uniform(50 + i as u64, n + 5, -2.0, 2.0);
        for scale in [1.0f32, -0.37, 1e-3] {
            let mut rec = Recorder::new(&gpu).unwrap();
            let ta = rec.upload_f32(&acc, &[n]).unwrap();
            let tb = rec.upload_f32(&b, &[n + 5]).unwrap();
            // b's view at offset 5: any offset works for the buffer ops.
            rec.accumulate(&ta, &tb.view(5, &[n]).unwrap(), scale)
                .unwrap();
            let got = run(rec.read(&ta)).unwrap();
            let mut twin = acc.clone();
            cpu_forward::accumulate(&mut twin, &b[5..], scale);
            for j in 0..n {
                let exact = acc[j] as f64 + scale as f64 * b[5 + j] as f64;
                let ulp = (acc[j].abs() + (scale * b[5 + j]).abs()) as f64 * f32::EPSILON as f64;
                if scale == 1.0 {
                    assert_eq!(got[j], twin[j], "acc += b [{n}] at {j}");
                }
                for (what, v) in [("GPU", got[j]), ("twin", twin[j])] {
                    assert!(
                        (v as f64 - exact).abs() <= ulp,
                        "acc += {scale} b [{n}] at {j}: {what} {v} vs f64 {exact}"
                    );
                }
            }
        }
    }
}

#[test]
fn buffer_ops_refuse_bad_shapes_with_clear_errors() {
    let gpu = gpu();
    let mut rec = Recorder::new(&gpu).unwrap();
    let a = rec.zeros(&[10], DType::F32).unwrap();
    let b = rec.zeros(&[11], DType::F32).unwrap();
    let e = rec.accumulate(&a, &b, 1.0).unwrap_err().to_string();
    assert!(e.contains("11 values into 10"), "{e}");
    let e = rec.copy(&a, &b).unwrap_err().to_string();
    assert!(e.contains("10 values into 11"), "{e}");
    let e = rec.accumulate(&a, &a.view(0, &[10]).unwrap(), 1.0);
    assert!(e.unwrap_err().to_string().contains("share one buffer"));
    let e = rec
        .copy_rows(&a, 5, 3, &b, 0, 3, 3, 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("overrun"), "{e}");
    assert!(a.view(5, &[6]).is_err());
    assert!(a.reshape(&[3, 3]).is_err());
    run(rec.finish()).unwrap();
}

/// One "training step" on fixed shapes: upload a batch, y = x W^T, grad += y, read one value.
fn step(gpu: &layerlab::compute::GpuContext, grad: &layerlab::compute::GpuTensor, k: u64) -> f32 {
    let (n, c, o) = (33, 70, 9);
    let x = uniform(100 + k, n * c, -1.0, 1.0);
    let w = uniform(200 + k, o * c, -1.0, 1.0);
    let mut rec = Recorder::new(gpu).unwrap();
    let xg = rec.upload(Matrix::new(&x, n, c).unwrap()).unwrap();
    let wg = rec.upload(Matrix::new(&w, o, c).unwrap()).unwrap();
    let y = rec.linear(&xg, &wg, None).unwrap();
    rec.accumulate(grad, &y, 1.0).unwrap();
    let probe = rec.output(&[1], DType::F32).unwrap();
    rec.copy_rows(&y, 0, 0, &probe, 0, 0, 1, 1).unwrap();
    let v = run(rec.read_many(&[&probe])).unwrap();
    run(rec.finish()).unwrap();
    v[0][0]
}

#[test]
fn the_pool_reuses_every_buffer_from_the_second_step_on() {
    let gpu = gpu();
    let mut rec = Recorder::new(&gpu).unwrap();
    let grad = rec.zeros(&[33, 9], DType::F32).unwrap();
    run(rec.finish()).unwrap();
    step(&gpu, &grad, 0);
    let after_one = gpu.pool_stats();
    for k in 1..4 {
        step(&gpu, &grad, k);
    }
    let after_four = gpu.pool_stats();
    assert_eq!(
        after_four.allocations, after_one.allocations,
        "steps 2-4 allocated: {after_one:?} -> {after_four:?}"
    );
    assert!(
        after_four.reuses >= after_one.reuses + 3 * 5,
        "{after_four:?}"
    );
    // The gradient summed over the four steps, against the CPU twins.
    let mut want = vec![0f32; 33 * 9];
    for k in 0..4 {
        let x = uniform(100 + k, 33 * 70, -1.0, 1.0);
        let w = uniform(200 + k, 9 * 70, -1.0, 1.0);
        let y = cpu_forward::linear(
            Matrix::new(&x, 33, 70).unwrap(),
            Matrix::new(&w, 9, 70).unwrap(),
            None,
        )
        .unwrap();
        cpu_forward::accumulate(&mut want, &y, 1.0);
    }
    let mut rec = Recorder::new(&gpu).unwrap();
    let got = run(rec.read(&grad)).unwrap();
    for (g, w) in got.iter().zip(&want) {
        // Each y within the linear kernel's 1e-5 of sum |x w| (<= 70 here), summed 4 times.
        assert!((g - w).abs() <= 4.0 * 70.0 * 1e-5, "{g} vs {w}");
    }
    eprintln!("pool after 4 steps: {after_four:?}");
}

#[test]
fn read_many_reads_chosen_tensors_in_one_submission() {
    let gpu = gpu();
    let x = uniform(7, 5 * 64, -1.0, 1.0);
    let w = uniform(8, 64, 0.5, 1.5);
    let mut rec = Recorder::new(&gpu).unwrap();
    let xg = rec.upload_f32(&x, &[5, 64]).unwrap();
    let wg = rec.upload_f32(&w, &[64]).unwrap();
    let h = rec.rms_norm(&xg, &wg, 1e-5).unwrap();
    let s = rec.swiglu(&h, &xg).unwrap();
    let r = rec.residual_add(&s, &h).unwrap();
    // Rows 2..4 of x as a view bound by a kernel (byte offset 512: aligned).
    let tail = rec
        .rms_norm(&xg.rows_view(2, 4).unwrap(), &wg, 1e-5)
        .unwrap();
    let got = run(rec.read_many(&[&h, &r, &tail])).unwrap();
    let stats = rec.stats();
    assert_eq!((stats.submissions, stats.readbacks), (1, 1), "{stats:?}");
    assert_eq!(stats.dispatches, 4);
    let xm = Matrix::new(&x, 5, 64).unwrap();
    let h_twin = cpu_forward::rms_norm(xm, &w, 1e-5);
    let r_twin = cpu_forward::residual_add(&cpu_forward::swiglu(&h_twin, &x), &h_twin);
    let tail_twin = cpu_forward::rms_norm(xm.rows(2, 4), &w, 1e-5);
    for (what, g, c) in [
        ("h", &got[0], &h_twin),
        ("r", &got[1], &r_twin),
        ("rows 2..4", &got[2], &tail_twin),
    ] {
        assert_eq!(g.len(), c.len(), "{what}");
        for (a, b) in g.iter().zip(c.iter()) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{what}: {a} vs {b}"
            );
        }
    }
    // A view at an offset no kernel binding can start at is refused by name.
    let odd = xg.view(3, &[64]).unwrap();
    let e = rec.rms_norm(&odd, &wg, 1e-5).unwrap_err().to_string();
    assert!(e.contains("rms_norm") && e.contains("byte 12"), "{e}");
    run(rec.finish()).unwrap();
}
