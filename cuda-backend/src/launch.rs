//! Kernel launches: the only place this crate passes raw arguments to a GPU kernel.

// A kernel launch is `unsafe` in cudarc: the compiler cannot check that the arguments match the
// kernel's C signature. Each launcher below matches one kernel in `kernels::SOURCE`, argument by
// argument, and bounds every thread by the element count it passes.
#![allow(unsafe_code)]

use cudarc::driver::{CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg};

use crate::device::Gpu;

fn config(n: usize) -> LaunchConfig {
    // 256 threads per block: one thread per element, any block size gives the same bits.
    let n = u32::try_from(n).expect("tensor larger than 2^32 elements");
    LaunchConfig {
        grid_dim: (n.div_ceil(256).max(1), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub fn add_assign(
    stream: &CudaStream,
    gpu: &Gpu,
    acc: &mut CudaSlice<f32>,
    src: &CudaSlice<f32>,
) -> Result<(), DriverError> {
    assert_eq!(acc.len(), src.len());
    let n = acc.len() as u32;
    let mut args = stream.launch_builder(&gpu.add_assign);
    args.arg(acc).arg(src).arg(&n);
    // SAFETY: faultline_add_assign(float*, const float*, unsigned int); both buffers hold `n`
    // floats and threads at or past `n` return.
    unsafe { args.launch(config(n as usize)) }?;
    Ok(())
}

pub fn sgd_update(
    stream: &CudaStream,
    gpu: &Gpu,
    params: &mut CudaSlice<f32>,
    grad: &CudaSlice<f32>,
    lr: f32,
) -> Result<(), DriverError> {
    assert_eq!(params.len(), grad.len());
    let n = params.len() as u32;
    let mut args = stream.launch_builder(&gpu.sgd_update);
    args.arg(params).arg(grad).arg(&lr).arg(&n);
    // SAFETY: faultline_sgd_update(float*, const float*, float, unsigned int); both buffers
    // hold `n` floats.
    unsafe { args.launch(config(n as usize)) }?;
    Ok(())
}

pub fn scale(
    stream: &CudaStream,
    gpu: &Gpu,
    values: &mut CudaSlice<f32>,
    factor: f32,
) -> Result<(), DriverError> {
    let n = values.len() as u32;
    let mut args = stream.launch_builder(&gpu.scale);
    args.arg(values).arg(&factor).arg(&n);
    // SAFETY: faultline_scale(float*, float, unsigned int); the buffer holds `n` floats.
    unsafe { args.launch(config(n as usize)) }?;
    Ok(())
}

/// The model's scalar arguments.
#[derive(Clone, Copy, Debug)]
pub struct ModelArgs {
    pub data_seed: u64,
    pub rank: u64,
    pub step: u64,
    pub batch: u32,
    pub inv_batch: f32,
}

/// The three model kernels in order on `stream`: errors per sample, gradient per parameter,
/// loss.
pub fn model(
    stream: &CudaStream,
    gpu: &Gpu,
    params: &CudaSlice<f32>,
    m: ModelArgs,
    errors: &mut CudaSlice<f32>,
    grad: &mut CudaSlice<f32>,
    loss: &mut CudaSlice<f32>,
) -> Result<(), DriverError> {
    let dim = params.len() as u32;
    assert_eq!(grad.len(), params.len());
    assert_eq!(errors.len(), m.batch as usize);
    assert_eq!(loss.len(), 1);
    let mut args = stream.launch_builder(&gpu.model_errors);
    args.arg(params)
        .arg(&dim)
        .arg(&m.data_seed)
        .arg(&m.rank)
        .arg(&m.step)
        .arg(&m.batch)
        .arg(&mut *errors);
    // SAFETY: faultline_model_errors(const float*, unsigned int, u64, u64, u64, unsigned int,
    // float*); params holds `dim` floats, errors `batch`.
    unsafe { args.launch(config(m.batch as usize)) }?;
    let mut args = stream.launch_builder(&gpu.model_gradient);
    args.arg(&*errors)
        .arg(&dim)
        .arg(&m.data_seed)
        .arg(&m.rank)
        .arg(&m.step)
        .arg(&m.batch)
        .arg(&m.inv_batch)
        .arg(grad);
    // SAFETY: faultline_model_gradient(const float*, unsigned int, u64, u64, u64, unsigned int,
    // float, float*); errors holds `batch` floats, grad `dim`.
    unsafe { args.launch(config(dim as usize)) }?;
    let mut args = stream.launch_builder(&gpu.model_loss);
    args.arg(&*errors).arg(&m.batch).arg(&m.inv_batch).arg(loss);
    // SAFETY: faultline_model_loss(const float*, unsigned int, float, float*); errors holds
    // `batch` floats, loss one.
    unsafe { args.launch(config(1)) }?;
    Ok(())
}
