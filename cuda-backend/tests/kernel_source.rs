//! The CUDA kernels' source, compiled as C by the host's C compiler and run one "thread" at a
//! time, gives trainer-core's bits: the hash, the data, the summation order and every rounding
//! step are right before any GPU sees them. (What only a GPU can show, that NVRTC with
//! `--fmad=false` keeps each rounding step, is tests/gpu.rs.) Without a C compiler the test
//! says it skipped.

use std::path::PathBuf;
use std::process::Command;

use cuda_backend::kernels;

/// Defines what CUDA provides, then launches each kernel over a grid of 256-thread blocks by
/// calling it once per (block, thread), in order; prints results as hexadecimal bits.
const HARNESS: &str = r#"
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

#[test]
fn kernel_source_run_as_c_on_the_host_gives_trainer_cores_bits() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("faultline-kernel-source-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // C has no `extern "C"`; everything else in the source is C.
    let source = kernels::SOURCE.replace("extern \"C\" ", "");
    std::fs::write(dir.join("kernels.c"), source).unwrap();
    std::fs::write(dir.join("harness.c"), HARNESS).unwrap();
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
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED kernel_source_run_as_c_on_the_host_gives_trainer_cores_bits: no C \
                 compiler ({e})"
            );
            return;
        }
    };
    assert!(
        compiled.status.success(),
        "the kernel source does not compile as C: {}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    for (dim, batch, rank, step) in [
        (1, 1, 0, 0),
        (256, 4, 3, 7),
        (1000, 13, 99, 1 << 20),
        (300, 1, 12345, 3),
    ] {
        let output = Command::new(&binary)
            .args([dim, batch, rank].map(|v| v.to_string()))
            .arg(step.to_string())
            .output()
            .unwrap();
        assert!(output.status.success());
        let got: Vec<String> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        let want = expected(dim, batch, rank, step);
        assert_eq!(got.len(), want.len());
        for (line, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "dim {dim} batch {batch}: line {line} (0 is the loss)");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
