//! Where a rank's tensors live and its kernels run. [`RankDevice`] is what the local transport
//! needs from one rank's device: put data in device memory, copy a peer's buffer into its own
//! memory, bring data back, run the kernels, and mark time. [`CudaRank`] is a CUDA stream on a
//! GPU; [`HostRank`] is plain memory with trainer-core's CPU kernels, so that the transport and
//! the runner are exercised on machines without a GPU.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DriverError};

use crate::kernels;
use crate::launch;

/// A device failure. The training logic has no way to survive a broken GPU in this backend yet,
/// so callers inside `Backend` methods turn it into a panic naming the rank.
#[derive(Debug)]
pub struct DeviceError(pub String);

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeviceError {}

impl From<DriverError> for DeviceError {
    fn from(e: DriverError) -> Self {
        DeviceError(format!("CUDA driver: {e}"))
    }
}

/// The kernel half of `trainer_core::Backend`, the same on every transport: each call runs on
/// the rank's device (`self.device()`) and a failure ends the rank (`self.fail(what, e)`).
/// Expanded inside each transport's `impl Backend`.
macro_rules! kernel_calls {
    () => {
        fn add_assign(&self, acc: &mut [f32], src: &[f32]) {
            self.device()
                .add_assign(acc, src)
                .unwrap_or_else(|e| self.fail("add_assign kernel", e));
        }

        fn sgd_update(&self, params: &mut [f32], grad: &[f32], lr: f32) {
            self.device()
                .sgd_update(params, grad, lr)
                .unwrap_or_else(|e| self.fail("sgd_update kernel", e));
        }

        fn layer_forward(
            &self,
            weights: &[f32],
            width: usize,
            h: &[f32],
            pre: &mut [f32],
            partial: &mut [f32],
        ) {
            self.device()
                .layer_forward(weights, width, h, pre, partial)
                .unwrap_or_else(|e| self.fail("layer_forward kernels", e));
        }

        fn layer_backward(
            &self,
            weights: &[f32],
            width: usize,
            saved: (&[f32], &[f32], &[f32]),
            grad: &mut [f32],
            partial_dh: &mut [f32],
        ) {
            self.device()
                .layer_backward(weights, width, saved, grad, partial_dh)
                .unwrap_or_else(|e| self.fail("layer_backward kernels", e));
        }
    };
}
pub(crate) use kernel_calls;

/// One rank's device.
pub trait RankDevice {
    type Buffer;
    type Mark;
    /// Where timings come from, for the report: `cuda-events` or `host-clock`.
    const TIMER: &'static str;

    /// A device buffer holding `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::Buffer, DeviceError>;
    /// A copy, in this rank's memory and in this rank's stream order, of a buffer that another
    /// rank of the same process filled.
    fn copy_from_peer(&self, src: &Self::Buffer) -> Result<Self::Buffer, DeviceError>;
    /// The buffer's contents, once the work that wrote it has finished.
    fn download(&self, buffer: &Self::Buffer) -> Result<Vec<f32>, DeviceError>;
    fn add_assign(&self, acc: &mut [f32], src: &[f32]) -> Result<(), DeviceError>;
    fn sgd_update(&self, params: &mut [f32], grad: &[f32], lr: f32) -> Result<(), DeviceError>;
    /// trainer_core::mlp::layer_forward: one proxy layer's forward on this rank's units.
    fn layer_forward(
        &self,
        weights: &[f32],
        width: usize,
        h: &[f32],
        pre: &mut [f32],
        partial: &mut [f32],
    ) -> Result<(), DeviceError>;
    /// trainer_core::mlp::layer_backward; `saved` is the layer's input, pre-activations and
    /// output gradient.
    fn layer_backward(
        &self,
        weights: &[f32],
        width: usize,
        saved: (&[f32], &[f32], &[f32]),
        grad: &mut [f32],
        partial_dh: &mut [f32],
    ) -> Result<(), DeviceError>;
    /// Waits for all work queued on this rank.
    fn synchronize(&self) -> Result<(), DeviceError>;
    /// A point in this rank's work, for timing.
    fn mark(&self) -> Result<Self::Mark, DeviceError>;
    /// Nanoseconds between two marks, once both have been reached.
    fn elapsed_ns(&self, from: &Self::Mark, to: &Self::Mark) -> Result<u64, DeviceError>;
    /// Names the device in reports.
    fn describe(&self) -> String;
}

/// Host memory and trainer-core's CPU kernels.
#[derive(Clone, Debug, Default)]
pub struct HostRank;

impl RankDevice for HostRank {
    type Buffer = Vec<f32>;
    type Mark = Instant;
    const TIMER: &'static str = "host-clock";

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>, DeviceError> {
        Ok(data.to_vec())
    }
    fn copy_from_peer(&self, src: &Vec<f32>) -> Result<Vec<f32>, DeviceError> {
        Ok(src.clone())
    }
    fn download(&self, buffer: &Vec<f32>) -> Result<Vec<f32>, DeviceError> {
        Ok(buffer.clone())
    }
    fn add_assign(&self, acc: &mut [f32], src: &[f32]) -> Result<(), DeviceError> {
        trainer_core::kernels::add_assign(acc, src);
        Ok(())
    }
    fn sgd_update(&self, params: &mut [f32], grad: &[f32], lr: f32) -> Result<(), DeviceError> {
        trainer_core::kernels::sgd_update(params, grad, lr);
        Ok(())
    }
    fn layer_forward(
        &self,
        weights: &[f32],
        width: usize,
        h: &[f32],
        pre: &mut [f32],
        partial: &mut [f32],
    ) -> Result<(), DeviceError> {
        trainer_core::mlp::layer_forward(weights, width, h, pre, partial);
        Ok(())
    }
    fn layer_backward(
        &self,
        weights: &[f32],
        width: usize,
        saved: (&[f32], &[f32], &[f32]),
        grad: &mut [f32],
        partial_dh: &mut [f32],
    ) -> Result<(), DeviceError> {
        trainer_core::mlp::layer_backward(weights, width, saved, grad, partial_dh);
        Ok(())
    }
    fn synchronize(&self) -> Result<(), DeviceError> {
        Ok(())
    }
    // A real backend times real work: the wall clock is the measurement here, not a leak into
    // simulated logic.
    #[allow(clippy::disallowed_methods)]
    fn mark(&self) -> Result<Instant, DeviceError> {
        Ok(Instant::now())
    }
    fn elapsed_ns(&self, from: &Instant, to: &Instant) -> Result<u64, DeviceError> {
        Ok(to.saturating_duration_since(*from).as_nanos() as u64)
    }
    fn describe(&self) -> String {
        "host (CPU kernels, no GPU)".into()
    }
}

/// The compiled kernels on one GPU, shared by every rank on it.
pub struct Gpu {
    pub context: Arc<CudaContext>,
    pub add_assign: CudaFunction,
    pub sgd_update: CudaFunction,
    pub scale: CudaFunction,
    pub model_errors: CudaFunction,
    pub model_gradient: CudaFunction,
    pub model_loss: CudaFunction,
    pub mlp_pre: CudaFunction,
    pub mlp_partial: CudaFunction,
    pub mlp_da: CudaFunction,
    pub mlp_dh: CudaFunction,
    pub mlp_weight_grad: CudaFunction,
    name: String,
}

impl Gpu {
    /// Opens GPU `ordinal` and compiles the kernels with NVRTC (`--fmad=false`). Call only after
    /// [`crate::probe::cuda`] said a GPU is present: cudarc panics when CUDA is missing.
    pub fn open(ordinal: usize) -> Result<Arc<Gpu>, DeviceError> {
        let context = CudaContext::new(ordinal)?;
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(kernels::SOURCE, kernels::compile_options())
            .map_err(|e| DeviceError(format!("NVRTC: {e}")))?;
        let module = context.load_module(ptx)?;
        let name = context.name().unwrap_or_else(|_| "unknown GPU".into());
        Ok(Arc::new(Gpu {
            add_assign: module.load_function(kernels::ADD_ASSIGN)?,
            sgd_update: module.load_function(kernels::SGD_UPDATE)?,
            scale: module.load_function(kernels::SCALE)?,
            model_errors: module.load_function(kernels::MODEL_ERRORS)?,
            model_gradient: module.load_function(kernels::MODEL_GRADIENT)?,
            model_loss: module.load_function(kernels::MODEL_LOSS)?,
            mlp_pre: module.load_function(kernels::MLP_PRE)?,
            mlp_partial: module.load_function(kernels::MLP_PARTIAL)?,
            mlp_da: module.load_function(kernels::MLP_DA)?,
            mlp_dh: module.load_function(kernels::MLP_DH)?,
            mlp_weight_grad: module.load_function(kernels::MLP_WEIGHT_GRAD)?,
            context,
            name: format!("GPU {ordinal}: {name}"),
        }))
    }

    /// A rank on this GPU with its own stream.
    pub fn rank(self: &Arc<Self>) -> Result<CudaRank, DeviceError> {
        Ok(CudaRank {
            stream: self.context.new_stream()?,
            gpu: self.clone(),
        })
    }
}

/// One rank on a GPU: its own stream. cudarc records an event on every buffer's last write and
/// read, so a buffer written on one rank's stream and copied on another's is ordered correctly.
pub struct CudaRank {
    pub stream: Arc<CudaStream>,
    pub gpu: Arc<Gpu>,
}

impl CudaRank {
    /// `data` computed on the device with `kernel_name`'s launcher; the host slices are copied
    /// in, the kernel runs, and the result is copied back.
    fn run_binary(
        &self,
        acc: &mut [f32],
        src: &[f32],
        launch: impl FnOnce(
            &CudaStream,
            &mut CudaSlice<f32>,
            &CudaSlice<f32>,
        ) -> Result<(), DriverError>,
    ) -> Result<(), DeviceError> {
        assert_eq!(acc.len(), src.len());
        if acc.is_empty() {
            return Ok(());
        }
        let mut acc_dev = self.stream.clone_htod(acc)?;
        let src_dev = self.stream.clone_htod(src)?;
        launch(&self.stream, &mut acc_dev, &src_dev)?;
        self.stream.memcpy_dtoh(&acc_dev, acc)?;
        self.stream.synchronize()?;
        Ok(())
    }

    /// trainer_core::model::loss_and_gradient on the device: features generated on the device
    /// from the same counter hash. Returns the loss; writes the gradient into `grad`.
    pub fn loss_and_gradient(
        &self,
        params: &[f32],
        data_seed: u64,
        rank: usize,
        step: u64,
        batch: usize,
        grad: &mut [f32],
    ) -> Result<f32, DeviceError> {
        assert_eq!(params.len(), grad.len());
        let params_dev = self.stream.clone_htod(params)?;
        let mut errors = self.stream.alloc_zeros::<f32>(batch)?;
        let mut grad_dev = self.stream.alloc_zeros::<f32>(params.len())?;
        let mut loss_dev = self.stream.alloc_zeros::<f32>(1)?;
        let inv_batch = 1.0 / batch as f32;
        launch::model(
            &self.stream,
            &self.gpu,
            &params_dev,
            launch::ModelArgs {
                data_seed,
                rank: rank as u64,
                step,
                batch: batch as u32,
                inv_batch,
            },
            &mut errors,
            &mut grad_dev,
            &mut loss_dev,
        )?;
        self.stream.memcpy_dtoh(&grad_dev, grad)?;
        let loss = self.stream.clone_dtoh(&loss_dev)?;
        self.stream.synchronize()?;
        Ok(loss[0])
    }

    /// trainer_core::mlp::layer_forward on the device: the inputs copied in, the two forward
    /// kernels, the results copied back. A layer with no units or no samples computes nothing
    /// a kernel could (CUDA refuses empty buffers), so the host function runs it, with the
    /// same (zero) results.
    pub fn mlp_layer_forward(
        &self,
        weights: &[f32],
        width: usize,
        h: &[f32],
        pre: &mut [f32],
        partial: &mut [f32],
    ) -> Result<(), DeviceError> {
        if pre.is_empty() || partial.is_empty() {
            trainer_core::mlp::layer_forward(weights, width, h, pre, partial);
            return Ok(());
        }
        let dims = launch::LayerDims::of(weights.len(), width, h.len());
        let weights_dev = self.stream.clone_htod(weights)?;
        let h_dev = self.stream.clone_htod(h)?;
        let mut pre_dev = self.stream.alloc_zeros::<f32>(pre.len())?;
        let mut partial_dev = self.stream.alloc_zeros::<f32>(partial.len())?;
        let outputs = (&mut pre_dev, &mut partial_dev);
        launch::mlp_forward(&self.stream, &self.gpu, &weights_dev, &h_dev, dims, outputs)?;
        self.stream.memcpy_dtoh(&pre_dev, pre)?;
        self.stream.memcpy_dtoh(&partial_dev, partial)?;
        self.stream.synchronize()?;
        Ok(())
    }

    /// trainer_core::mlp::layer_backward on the device: the three backward kernels, the
    /// weights' gradient added to `grad` on the device and copied back with the input's
    /// partial gradient. Empty layers run on the host, as in the forward.
    pub fn mlp_layer_backward(
        &self,
        weights: &[f32],
        width: usize,
        (h, pre, g): (&[f32], &[f32], &[f32]),
        grad: &mut [f32],
        partial_dh: &mut [f32],
    ) -> Result<(), DeviceError> {
        if pre.is_empty() || partial_dh.is_empty() {
            trainer_core::mlp::layer_backward(weights, width, (h, pre, g), grad, partial_dh);
            return Ok(());
        }
        let dims = launch::LayerDims::of(weights.len(), width, h.len());
        let weights_dev = self.stream.clone_htod(weights)?;
        let (h_dev, pre_dev) = (self.stream.clone_htod(h)?, self.stream.clone_htod(pre)?);
        let g_dev = self.stream.clone_htod(g)?;
        let mut grad_dev = self.stream.clone_htod(grad)?;
        let mut da_dev = self.stream.alloc_zeros::<f32>(pre.len())?;
        let mut dh_dev = self.stream.alloc_zeros::<f32>(partial_dh.len())?;
        let saved = launch::LayerSaved {
            h: &h_dev,
            pre: &pre_dev,
            g: &g_dev,
        };
        let outputs = (&mut da_dev, &mut grad_dev, &mut dh_dev);
        launch::mlp_backward(&self.stream, &self.gpu, &weights_dev, saved, dims, outputs)?;
        self.stream.memcpy_dtoh(&grad_dev, grad)?;
        self.stream.memcpy_dtoh(&dh_dev, partial_dh)?;
        self.stream.synchronize()?;
        Ok(())
    }

    /// `values *= factor` on the device.
    pub fn scale(&self, values: &mut [f32], factor: f32) -> Result<(), DeviceError> {
        if values.is_empty() {
            return Ok(());
        }
        let mut dev = self.stream.clone_htod(values)?;
        launch::scale(&self.stream, &self.gpu, &mut dev, factor)?;
        self.stream.memcpy_dtoh(&dev, values)?;
        self.stream.synchronize()?;
        Ok(())
    }
}

impl RankDevice for CudaRank {
    /// `None` for an empty payload (a barrier's): CUDA refuses zero-byte allocations.
    type Buffer = Option<CudaSlice<f32>>;
    type Mark = CudaEvent;
    const TIMER: &'static str = "cuda-events";

    fn upload(&self, data: &[f32]) -> Result<Option<CudaSlice<f32>>, DeviceError> {
        if data.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.stream.clone_htod(data)?))
    }
    fn copy_from_peer(
        &self,
        src: &Option<CudaSlice<f32>>,
    ) -> Result<Option<CudaSlice<f32>>, DeviceError> {
        let Some(src) = src else {
            return Ok(None);
        };
        // A device-to-device copy queued on the receiving rank's stream; cudarc makes it wait
        // for the event recorded on the sender's write.
        Ok(Some(self.stream.clone_dtod(src)?))
    }
    fn download(&self, buffer: &Option<CudaSlice<f32>>) -> Result<Vec<f32>, DeviceError> {
        let Some(buffer) = buffer else {
            return Ok(Vec::new());
        };
        let data = self.stream.clone_dtoh(buffer)?;
        self.stream.synchronize()?;
        Ok(data)
    }
    fn add_assign(&self, acc: &mut [f32], src: &[f32]) -> Result<(), DeviceError> {
        let gpu = &self.gpu;
        self.run_binary(acc, src, |stream, a, s| {
            launch::add_assign(stream, gpu, a, s)
        })
    }
    fn sgd_update(&self, params: &mut [f32], grad: &[f32], lr: f32) -> Result<(), DeviceError> {
        let gpu = &self.gpu;
        self.run_binary(params, grad, |stream, p, g| {
            launch::sgd_update(stream, gpu, p, g, lr)
        })
    }
    fn layer_forward(
        &self,
        weights: &[f32],
        width: usize,
        h: &[f32],
        pre: &mut [f32],
        partial: &mut [f32],
    ) -> Result<(), DeviceError> {
        self.mlp_layer_forward(weights, width, h, pre, partial)
    }
    fn layer_backward(
        &self,
        weights: &[f32],
        width: usize,
        saved: (&[f32], &[f32], &[f32]),
        grad: &mut [f32],
        partial_dh: &mut [f32],
    ) -> Result<(), DeviceError> {
        self.mlp_layer_backward(weights, width, saved, grad, partial_dh)
    }
    fn synchronize(&self) -> Result<(), DeviceError> {
        Ok(self.stream.synchronize()?)
    }
    fn mark(&self) -> Result<CudaEvent, DeviceError> {
        // Timing events (the default flags disable timing).
        let event = self
            .gpu
            .context
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))?;
        event.record(&self.stream)?;
        Ok(event)
    }
    fn elapsed_ns(&self, from: &CudaEvent, to: &CudaEvent) -> Result<u64, DeviceError> {
        to.synchronize()?;
        let ms = from.elapsed_ms(to)?;
        Ok((f64::from(ms) * 1e6).max(0.0) as u64)
    }
    fn describe(&self) -> String {
        self.gpu.name.clone()
    }
}
