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
/// The layout job's proxy layer (trainer_core::mlp): forward, then backward.
pub const MLP_PRE: &str = "faultline_mlp_pre";
pub const MLP_PARTIAL: &str = "faultline_mlp_partial";
pub const MLP_DA: &str = "faultline_mlp_da";
pub const MLP_DH: &str = "faultline_mlp_dh";
pub const MLP_WEIGHT_GRAD: &str = "faultline_mlp_weight_grad";

pub const ALL: [&str; 11] = [
    ADD_ASSIGN,
    SGD_UPDATE,
    SCALE,
    MODEL_ERRORS,
    MODEL_GRADIENT,
    MODEL_LOSS,
    MLP_PRE,
    MLP_PARTIAL,
    MLP_DA,
    MLP_DH,
    MLP_WEIGHT_GRAD,
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

// trainer_core::mlp, one proxy layer on a rank's `units` hidden units: `weights` holds W1's
// rows (units x width) then W2 transposed (units x width); `h` and `partial` are batch x width,
// `pre` and `da` batch x units. Each sum runs in the host's order (the host's loops nest
// samples, then units, then elements, and every output element's terms arrive in ascending
// order of the index summed over), from the host's starting value.

// f32::max(a, 0.0) for the sums here, which are never -0.0 (they start from +0.0).
__device__ float faultline_relu(float a) { return a > 0.0f ? a : 0.0f; }

// Forward, one thread per (sample s, unit f): pre = sum over j of W1[f][j] * h[s][j].
extern "C" __global__ void faultline_mlp_pre(
    const float *weights, const float *h, unsigned int width, unsigned int units,
    unsigned int batch, float *pre) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * units) { return; }
    unsigned int s = i / units, f = i % units;
    float sum = 0.0f;
    for (unsigned int j = 0; j < width; j++) {
        sum = sum + weights[f * width + j] * h[s * width + j];
    }
    pre[i] = sum;
}

// Forward, one thread per (sample s, element j): partial = sum over f of relu(pre[s][f]) * W2t[f][j].
extern "C" __global__ void faultline_mlp_partial(
    const float *weights, const float *pre, unsigned int width, unsigned int units,
    unsigned int batch, float *partial) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * width) { return; }
    unsigned int s = i / width, j = i % width;
    const float *w2t = weights + units * width;
    float sum = 0.0f;
    for (unsigned int f = 0; f < units; f++) {
        sum = sum + faultline_relu(pre[s * units + f]) * w2t[f * width + j];
    }
    partial[i] = sum;
}

// Backward, one thread per (sample s, unit f): the pre-activation's gradient, the sum over j
// of W2t[f][j] * g[s][j] where the unit is active, 0 where not.
extern "C" __global__ void faultline_mlp_da(
    const float *weights, const float *pre, const float *g, unsigned int width,
    unsigned int units, unsigned int batch, float *da) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * units) { return; }
    unsigned int s = i / units, f = i % units;
    const float *w2t = weights + units * width;
    float du = 0.0f;
    for (unsigned int j = 0; j < width; j++) {
        du = du + w2t[f * width + j] * g[s * width + j];
    }
    da[i] = pre[i] > 0.0f ? du : 0.0f;
}

// Backward, one thread per (sample s, element j): the input's partial gradient, the sum over
// f of W1[f][j] * da[s][f].
extern "C" __global__ void faultline_mlp_dh(
    const float *weights, const float *da, unsigned int width, unsigned int units,
    unsigned int batch, float *dh) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * width) { return; }
    unsigned int s = i / width, j = i % width;
    float sum = 0.0f;
    for (unsigned int f = 0; f < units; f++) {
        sum = sum + weights[f * width + j] * da[s * units + f];
    }
    dh[i] = sum;
}

// Backward, one thread per weight (W1's, then W2t's): adds, sample by sample in order, the
// weight's gradient to what `grad` already holds (earlier micro-batches).
extern "C" __global__ void faultline_mlp_weight_grad(
    const float *pre, const float *da, const float *h, const float *g, unsigned int width,
    unsigned int units, unsigned int batch, float *grad) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned int per_matrix = units * width;
    if (i >= 2 * per_matrix) { return; }
    unsigned int k = i % per_matrix, f = k / width, j = k % width;
    float acc = grad[i];
    if (i < per_matrix) {
        for (unsigned int s = 0; s < batch; s++) {
            acc = acc + da[s * units + f] * h[s * width + j];
        }
    } else {
        for (unsigned int s = 0; s < batch; s++) {
            acc = acc + faultline_relu(pre[s * units + f]) * g[s * width + j];
        }
    }
    grad[i] = acc;
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
