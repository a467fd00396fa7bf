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

/// One proxy layer's sizes (trainer_core::mlp): the rank's hidden units, the layer's width and
/// the samples in the batch.
#[derive(Clone, Copy, Debug)]
pub struct LayerDims {
    pub width: u32,
    pub units: u32,
    pub batch: u32,
}

impl LayerDims {
    /// From the host slices' lengths, as trainer_core::mlp derives them; every index a kernel
    /// computes is below `2 * units * width` or `batch * width`, which fit in 32 bits.
    pub fn of(weights: usize, width: usize, h: usize) -> LayerDims {
        assert!(width > 0 && weights % (2 * width) == 0 && h % width == 0);
        let fits = |n: usize| u32::try_from(n).expect("a layer larger than 2^32 elements");
        let (units, batch) = (weights / (2 * width), h / width);
        fits(weights.max(h).max(batch * units));
        LayerDims {
            width: fits(width),
            units: fits(units),
            batch: fits(batch),
        }
    }
}

/// The layer's forward on `stream`: the pre-activations, then the partial output.
pub fn mlp_forward(
    stream: &CudaStream,
    gpu: &Gpu,
    weights: &CudaSlice<f32>,
    h: &CudaSlice<f32>,
    d: LayerDims,
    (pre, partial): (&mut CudaSlice<f32>, &mut CudaSlice<f32>),
) -> Result<(), DriverError> {
    let (width, units, batch) = (d.width as usize, d.units as usize, d.batch as usize);
    assert_eq!(weights.len(), 2 * units * width);
    assert_eq!(
        (h.len(), partial.len(), pre.len()),
        (batch * width, batch * width, batch * units)
    );
    let mut args = stream.launch_builder(&gpu.mlp_pre);
    args.arg(weights)
        .arg(h)
        .arg(&d.width)
        .arg(&d.units)
        .arg(&d.batch)
        .arg(&mut *pre);
    // SAFETY: faultline_mlp_pre(const float*, const float*, unsigned int x3, float*); the
    // lengths are asserted above; threads at or past batch * units return.
    unsafe { args.launch(config(batch * units)) }?;
    let mut args = stream.launch_builder(&gpu.mlp_partial);
    args.arg(weights)
        .arg(&*pre)
        .arg(&d.width)
        .arg(&d.units)
        .arg(&d.batch)
        .arg(partial);
    // SAFETY: faultline_mlp_partial(const float*, const float*, unsigned int x3, float*);
    // threads at or past batch * width return.
    unsafe { args.launch(config(batch * width)) }?;
    Ok(())
}

/// The layer's input, pre-activations and output gradient on the device, for the backward.
pub struct LayerSaved<'a> {
    pub h: &'a CudaSlice<f32>,
    pub pre: &'a CudaSlice<f32>,
    pub g: &'a CudaSlice<f32>,
}

/// The layer's backward on `stream`: the pre-activations' gradient (into `da`), the input's
/// partial gradient, and the weights' gradient added into `grad`.
pub fn mlp_backward(
    stream: &CudaStream,
    gpu: &Gpu,
    weights: &CudaSlice<f32>,
    saved: LayerSaved,
    d: LayerDims,
    (da, grad, dh): (
        &mut CudaSlice<f32>,
        &mut CudaSlice<f32>,
        &mut CudaSlice<f32>,
    ),
) -> Result<(), DriverError> {
    let (width, units, batch) = (d.width as usize, d.units as usize, d.batch as usize);
    assert_eq!(
        (weights.len(), grad.len()),
        (2 * units * width, 2 * units * width)
    );
    assert_eq!(
        (saved.h.len(), saved.g.len(), dh.len()),
        (batch * width, batch * width, batch * width)
    );
    assert_eq!((saved.pre.len(), da.len()), (batch * units, batch * units));
    let mut args = stream.launch_builder(&gpu.mlp_da);
    args.arg(weights).arg(saved.pre).arg(saved.g);
    args.arg(&d.width).arg(&d.units).arg(&d.batch).arg(&mut *da);
    // SAFETY: faultline_mlp_da(const float* x3, unsigned int x3, float*); the lengths are
    // asserted above; threads at or past batch * units return.
    unsafe { args.launch(config(batch * units)) }?;
    let mut args = stream.launch_builder(&gpu.mlp_dh);
    args.arg(weights)
        .arg(&*da)
        .arg(&d.width)
        .arg(&d.units)
        .arg(&d.batch)
        .arg(dh);
    // SAFETY: faultline_mlp_dh(const float*, const float*, unsigned int x3, float*); threads
    // at or past batch * width return.
    unsafe { args.launch(config(batch * width)) }?;
    let mut args = stream.launch_builder(&gpu.mlp_weight_grad);
    args.arg(saved.pre).arg(&*da).arg(saved.h).arg(saved.g);
    args.arg(&d.width).arg(&d.units).arg(&d.batch).arg(grad);
    // SAFETY: faultline_mlp_weight_grad(const float* x4, unsigned int x3, float*); threads at
    // or past 2 * units * width return.
    unsafe { args.launch(config(2 * units * width)) }?;
    Ok(())
}
