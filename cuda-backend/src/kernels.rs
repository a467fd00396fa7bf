//! The CUDA kernels, as source compiled at run time by NVRTC with fused multiply-add off.
//!
//! Each one reproduces a CPU function of trainer-core bit for bit: one thread per output
//! element, every sum in the CPU's order starting from the same value, plain `+ - *` only (no
//! atomics, no `fma`, no fast-math intrinsics, no transcendental functions). With `--fmad=false`
//! NVRTC emits `add.rn`/`mul.rn`, which the GPU compiler does not fuse, so a product followed by
//! a sum rounds twice, as on the CPU (gpu.md measured the difference: 10% of results differ with
//! the default).

use cudarc::nvrtc::CompileOptions;

/// Kernel names, as `extern "C"` symbols in [`SOURCE`].
pub const ADD_ASSIGN: &str = "faultline_add_assign";
pub const SGD_UPDATE: &str = "faultline_sgd_update";
pub const SCALE: &str = "faultline_scale";
pub const MODEL_ERRORS: &str = "faultline_model_errors";
pub const MODEL_GRADIENT: &str = "faultline_model_gradient";
pub const MODEL_LOSS: &str = "faultline_model_loss";

pub const ALL: [&str; 6] = [
    ADD_ASSIGN,
    SGD_UPDATE,
    SCALE,
    MODEL_ERRORS,
    MODEL_GRADIENT,
    MODEL_LOSS,
];

/// The kernels. The model's data is a counter hash (trainer_core::model), which is integer
/// arithmetic on 64-bit words and exact on any machine, so the device generates the same
/// features as the host instead of copying them over.
pub const SOURCE: &str = r#"
typedef unsigned long long u64;

// trainer_core::kernels::add_assign: acc[i] += src[i].
extern "C" __global__ void faultline_add_assign(float *acc, const float *src, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { acc[i] = acc[i] + src[i]; }
}

// trainer_core::kernels::sgd_update: params[i] -= lr * grad[i], the product rounded first.
extern "C" __global__ void faultline_sgd_update(float *params, const float *grad, float lr, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { params[i] = params[i] - lr * grad[i]; }
}

// trainer_core::kernels::scale: values[i] *= factor.
extern "C" __global__ void faultline_scale(float *values, float factor, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { values[i] = values[i] * factor; }
}

// trainer_core::digest::mix64 (SplitMix64's finaliser).
__device__ u64 faultline_mix64(u64 x) {
    x = x + 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

__device__ u64 faultline_hash3(u64 seed, u64 a, u64 b) {
    return faultline_mix64(faultline_mix64(seed ^ faultline_mix64(a)) ^ b);
}

// trainer_core::model::unit: 24 bits, so the conversion and the scaling are exact.
__device__ float faultline_unit(u64 hash) {
    return ((float)(hash >> 40)) * (2.0f / 16777216.0f) - 1.0f;
}

__device__ u64 faultline_sample_id(u64 rank, u64 step, u64 sample, u64 batch) {
    return (step << 40) ^ (rank * batch + sample);
}

// One thread per sample: error[s] = prediction - target, both summed over i in order from 0.0.
extern "C" __global__ void faultline_model_errors(
    const float *params, unsigned int dim, u64 data_seed, u64 rank, u64 step,
    unsigned int batch, float *errors) {
    unsigned int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= batch) { return; }
    u64 id = faultline_sample_id(rank, step, s, batch);
    float target = 0.0f;
    float prediction = 0.0f;
    for (unsigned int i = 0; i < dim; i++) {
        float x = faultline_unit(faultline_hash3(data_seed, id, i));
        float w = faultline_unit(faultline_hash3(data_seed, 0xffffffffffffffffULL, i));
        target = target + w * x;
        prediction = prediction + params[i] * x;
    }
    errors[s] = prediction - target;
}

// One thread per parameter: grad[i] = (sum over samples in order of (2 * error) * x) * inv_batch.
extern "C" __global__ void faultline_model_gradient(
    const float *errors, unsigned int dim, u64 data_seed, u64 rank, u64 step,
    unsigned int batch, float inv_batch, float *grad) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= dim) { return; }
    float g = 0.0f;
    for (unsigned int s = 0; s < batch; s++) {
        u64 id = faultline_sample_id(rank, step, s, batch);
        float x = faultline_unit(faultline_hash3(data_seed, id, i));
        float factor = 2.0f * errors[s];
        g = g + factor * x;
    }
    grad[i] = g * inv_batch;
}

// One thread: loss = (sum over samples in order of error * error) * inv_batch.
extern "C" __global__ void faultline_model_loss(
    const float *errors, unsigned int batch, float inv_batch, float *loss) {
    if (blockIdx.x * blockDim.x + threadIdx.x != 0) { return; }
    float sum = 0.0f;
    for (unsigned int s = 0; s < batch; s++) { sum = sum + errors[s] * errors[s]; }
    loss[0] = sum * inv_batch;
}
"#;

/// NVRTC options: no fused multiply-add, IEEE division and square root, denormals kept.
pub fn compile_options() -> CompileOptions {
    CompileOptions {
        fmad: Some(false),
        ftz: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        use_fast_math: Some(false),
        ..Default::default()
    }
}
