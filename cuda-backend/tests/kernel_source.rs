//! The CUDA kernels' source, compiled as C by the host's C compiler and run one "thread" at a
//! time, gives trainer-core's bits: the hash, the data, the summation order and every rounding
//! step are right before any GPU sees them. (What only a GPU can show, that NVRTC with
//! `--fmad=false` keeps each rounding step, is tests/gpu.rs.) Without a C compiler the test
//! says it skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use cuda_backend::kernels;

/// Defines what CUDA provides, then launches each kernel over a grid of 256-thread blocks by
/// calling it once per (block, thread), in order; prints results as hexadecimal bits.
const PRELUDE: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
struct dim3 { unsigned int x; };
static struct dim3 blockIdx, blockDim, threadIdx;
#define __global__
#define __device__
#include "kernels.c"
#define LAUNCH(n, call) do { blockDim.x = 256; \
    for (unsigned b = 0; b == 0 || b < ((n) + 255) / 256; b++) { blockIdx.x = b; \
        for (unsigned t = 0; t < 256; t++) { threadIdx.x = t; call; } } } while (0)
static void print(const float *v, unsigned n) {
    for (unsigned i = 0; i < n; i++) { unsigned b; memcpy(&b, &v[i], 4); printf("%08x\n", b); }
}
"#;

/// The linear model's kernels and the element-wise ones, on a model of `dim` parameters.
const MODEL_MAIN: &str = r#"
int main(int argc, char **argv) {
    if (argc != 5) { return 2; }
    unsigned dim = atoi(argv[1]), batch = atoi(argv[2]);
    u64 rank = strtoull(argv[3], 0, 10), step = strtoull(argv[4], 0, 10), seed = 0x5eed;
    float *params = calloc(dim, 4), *grad = calloc(dim, 4), *errors = calloc(batch, 4), loss;
    for (unsigned i = 0; i < dim; i++) { params[i] = (float)((int)(i % 7) - 3) * 0.173f; }
    float inv_batch = 1.0f / (float)batch;
    LAUNCH(batch, faultline_model_errors(params, dim, seed, rank, step, batch, errors));
    LAUNCH(dim, faultline_model_gradient(errors, dim, seed, rank, step, batch, inv_batch, grad));
    LAUNCH(1, faultline_model_loss(errors, batch, inv_batch, &loss));
    print(&loss, 1);
    print(grad, dim);
    LAUNCH(dim, faultline_sgd_update(params, grad, 0.3f, dim));
    LAUNCH(dim, faultline_add_assign(params, grad, dim));
    LAUNCH(dim, faultline_scale(params, 1.0f / 7.0f, dim));
    print(params, dim);
    return 0;
}
"#;

/// The layout job's proxy layer (trainer_core::mlp): forward, then backward, on `units` hidden
/// units of a layer of `width` over `batch` samples, with `val`'s inputs.
const MLP_MAIN: &str = r#"
static float val(unsigned seed, unsigned i) {
    int k = (int)(((i * 2654435761u) ^ (seed * 40503u)) % 2001u) - 1000;
    return (float)k * 0.0173f;
}
int main(int argc, char **argv) {
    if (argc != 4) { return 2; }
    unsigned width = atoi(argv[1]), units = atoi(argv[2]), batch = atoi(argv[3]);
    unsigned nw = 2 * units * width, nh = batch * width, nu = batch * units;
    float *w = calloc(nw, 4), *grad = calloc(nw, 4), *h = calloc(nh, 4), *g = calloc(nh, 4);
    float *partial = calloc(nh, 4), *dh = calloc(nh, 4), *pre = calloc(nu, 4), *da = calloc(nu, 4);
    for (unsigned i = 0; i < nw; i++) { w[i] = val(1, i); grad[i] = val(3, i); }
    for (unsigned i = 0; i < nh; i++) { h[i] = val(2, i); g[i] = val(4, i); }
    LAUNCH(nu, faultline_mlp_pre(w, h, width, units, batch, pre));
    LAUNCH(nh, faultline_mlp_partial(w, pre, width, units, batch, partial));
    LAUNCH(nu, faultline_mlp_da(w, pre, g, width, units, batch, da));
    LAUNCH(nh, faultline_mlp_dh(w, da, width, units, batch, dh));
    LAUNCH(nw, faultline_mlp_weight_grad(pre, da, h, g, width, units, batch, grad));
    print(pre, nu);
    print(partial, nh);
    print(grad, nw);
    print(dh, nh);
    return 0;
}
"#;

/// The MLP harness's inputs, as `val` computes them.
fn val(seed: u32, i: usize) -> f32 {
    let k = ((i as u32).wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) % 2001;
    (k as i32 - 1000) as f32 * 0.0173f32
}

/// What the MLP harness prints, computed by trainer-core.
fn expected_mlp(width: usize, units: usize, batch: usize) -> Vec<String> {
    let weights: Vec<f32> = (0..2 * units * width).map(|i| val(1, i)).collect();
    let mut grad: Vec<f32> = (0..2 * units * width).map(|i| val(3, i)).collect();
    let h: Vec<f32> = (0..batch * width).map(|i| val(2, i)).collect();
    let g: Vec<f32> = (0..batch * width).map(|i| val(4, i)).collect();
    let (mut pre, mut partial) = (vec![0.0; batch * units], vec![0.0; batch * width]);
    trainer_core::mlp::layer_forward(&weights, width, &h, &mut pre, &mut partial);
    let mut dh = vec![0.0; batch * width];
    trainer_core::mlp::layer_backward(&weights, width, (&h, &pre, &g), &mut grad, &mut dh);
    [&pre, &partial, &grad, &dh]
        .iter()
        .flat_map(|v| v.iter().map(|x| format!("{:08x}", x.to_bits())))
        .collect()
}

/// What the harness prints, computed by trainer-core.
fn expected(dim: usize, batch: usize, rank: usize, step: u64) -> Vec<String> {
    let mut params: Vec<f32> = (0..dim)
        .map(|i| ((i % 7) as i32 - 3) as f32 * 0.173f32)
        .collect();
    let mut grad = vec![0.0f32; dim];
    let loss =
        trainer_core::model::loss_and_gradient(&params, 0x5eed, rank, step, batch, &mut grad);
    let mut lines = vec![format!("{:08x}", loss.to_bits())];
    lines.extend(grad.iter().map(|g| format!("{:08x}", g.to_bits())));
    trainer_core::kernels::sgd_update(&mut params, &grad, 0.3);
    trainer_core::kernels::add_assign(&mut params, &grad);
    trainer_core::kernels::scale(&mut params, 1.0 / 7.0);
    lines.extend(params.iter().map(|p| format!("{:08x}", p.to_bits())));
    lines
}

/// The harness `main` compiled with the kernel source into `dir`; `None`, having said why the
/// test `test` skipped, without a C compiler.
fn compile(dir: &Path, main: &str, test: &str) -> Option<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    // C has no `extern "C"`; everything else in the source is C.
    let source = kernels::SOURCE.replace("extern \"C\" ", "");
    std::fs::write(dir.join("kernels.c"), source).unwrap();
    std::fs::write(dir.join("harness.c"), format!("{PRELUDE}{main}")).unwrap();
    let binary = dir.join("harness");
    // No contraction into fused multiply-adds, as --fmad=false on the GPU; SSE arithmetic on
    // x86-64, so no excess precision.
    let compiled = Command::new("cc")
        .args(["-std=c11", "-O2", "-ffp-contract=off", "-o"])
        .arg(&binary)
        .arg(dir.join("harness.c"))
        .output();
    let compiled = match compiled {
        Ok(output) => output,
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: no C compiler ({e})");
            return None;
        }
    };
    assert!(
        compiled.status.success(),
        "the kernel source does not compile as C: {}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    Some(binary)
}

/// The harness's output lines for `args`.
fn run_harness(binary: &Path, args: &[String]) -> Vec<String> {
    let output = Command::new(binary).args(args).output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "faultline-kernel-source-{name}-{}",
        std::process::id()
    ))
}

#[test]
fn kernel_source_run_as_c_on_the_host_gives_trainer_cores_bits() {
    let test = "kernel_source_run_as_c_on_the_host_gives_trainer_cores_bits";
    let dir = scratch("model");
    let Some(binary) = compile(&dir, MODEL_MAIN, test) else {
        return;
    };
    for (dim, batch, rank, step) in [
        (1, 1, 0, 0),
        (256, 4, 3, 7),
        (1000, 13, 99, 1 << 20),
        (300, 1, 12345, 3),
    ] {
        let args = [dim, batch, rank].map(|v| v.to_string());
        let mut args = args.to_vec();
        args.push(step.to_string());
        let got = run_harness(&binary, &args);
        let want = expected(dim, batch, rank, step);
        assert_eq!(got.len(), want.len());
        for (line, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "dim {dim} batch {batch}: line {line} (0 is the loss)");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The layout job's layer kernels: the pre-activations, partial output, weights' gradient
/// (added to a nonzero one) and input's partial gradient, in that order, bit for bit.
#[test]
fn mlp_kernel_source_run_as_c_on_the_host_gives_trainer_cores_bits() {
    let test = "mlp_kernel_source_run_as_c_on_the_host_gives_trainer_cores_bits";
    let dir = scratch("mlp");
    let Some(binary) = compile(&dir, MLP_MAIN, test) else {
        return;
    };
    // (width, units, batch): one unit, a TP rank's share, a whole layer, a grid of blocks.
    for (width, units, batch) in [(1, 1, 1), (16, 8, 2), (64, 64, 3), (300, 7, 5)] {
        let args = [width, units, batch].map(|v| v.to_string());
        let got = run_harness(&binary, &args);
        let want = expected_mlp(width, units, batch);
        assert_eq!(got.len(), want.len());
        for (line, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g, w,
                "width {width} units {units} batch {batch}: line {line}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
