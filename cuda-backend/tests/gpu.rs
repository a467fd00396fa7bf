//! Each kernel against trainer-core's CPU function, bit for bit, on a real GPU. Skips (and says
//! so) without one; REQUIRE_GPU=1 makes that a failure.

use cuda_backend::device::{Gpu, RankDevice};
use cuda_backend::probe::gpu_or_skip;
use trainer_core::digest::mix64;

/// Awkward values: mixed signs and magnitudes, so rounding differences would show.
fn values(seed: u64, count: usize) -> Vec<f32> {
    (0..count as u64)
        .map(|i| {
            let h = mix64(seed ^ mix64(i));
            let mantissa = (h >> 40) as f32 / (1u64 << 24) as f32;
            let exponent = ((h >> 8) % 16) as i32 - 8;
            let sign = if h & 1 == 0 { 1.0 } else { -1.0 };
            sign * mantissa * 2f32.powi(exponent)
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn gpu_kernels_match_the_cpu_bit_for_bit() {
    let Some(_) = gpu_or_skip("gpu_kernels_match_the_cpu_bit_for_bit") else {
        return;
    };
    let gpu = Gpu::open(0).expect("GPU 0 opens and the kernels compile");
    let rank = gpu.rank().unwrap();
    for count in [1, 255, 256, 257, 100_003] {
        let (a, b) = (values(1, count), values(2, count));
        let mut cpu = a.clone();
        trainer_core::kernels::add_assign(&mut cpu, &b);
        let mut dev = a.clone();
        rank.add_assign(&mut dev, &b).unwrap();
        assert_eq!(bits(&dev), bits(&cpu), "add_assign {count}");

        let mut cpu = a.clone();
        trainer_core::kernels::sgd_update(&mut cpu, &b, 0.3);
        let mut dev = a.clone();
        rank.sgd_update(&mut dev, &b, 0.3).unwrap();
        assert_eq!(bits(&dev), bits(&cpu), "sgd_update {count}");

        let mut cpu = a.clone();
        trainer_core::kernels::scale(&mut cpu, 1.0 / 7.0);
        let mut dev = a.clone();
        rank.scale(&mut dev, 1.0 / 7.0).unwrap();
        assert_eq!(bits(&dev), bits(&cpu), "scale {count}");
    }
}

#[test]
fn gpu_model_loss_and_gradient_match_the_cpu_bit_for_bit() {
    let Some(_) = gpu_or_skip("gpu_model_loss_and_gradient_match_the_cpu_bit_for_bit") else {
        return;
    };
    let gpu = Gpu::open(0).expect("GPU 0 opens and the kernels compile");
    let rank = gpu.rank().unwrap();
    for (dim, batch, r, step) in [(1, 1, 0, 0), (256, 4, 3, 7), (1000, 13, 99, 1 << 20)] {
        let params = values(dim as u64, dim);
        let mut cpu_grad = vec![0.0; dim];
        let cpu_loss =
            trainer_core::model::loss_and_gradient(&params, 0x5eed, r, step, batch, &mut cpu_grad);
        let mut dev_grad = vec![0.0; dim];
        let dev_loss = rank
            .loss_and_gradient(&params, 0x5eed, r, step, batch, &mut dev_grad)
            .unwrap();
        assert_eq!(dev_loss.to_bits(), cpu_loss.to_bits(), "loss {dim}/{batch}");
        assert_eq!(bits(&dev_grad), bits(&cpu_grad), "gradient {dim}/{batch}");
    }
}

#[test]
fn gpu_device_to_device_copies_between_rank_streams_keep_every_bit() {
    let Some(_) = gpu_or_skip("gpu_device_to_device_copies_between_rank_streams_keep_every_bit")
    else {
        return;
    };
    let gpu = Gpu::open(0).unwrap();
    let (sender, receiver) = (gpu.rank().unwrap(), gpu.rank().unwrap());
    let data = values(3, 4099);
    let staged = sender.upload(&data).unwrap();
    let delivered = receiver.copy_from_peer(&staged).unwrap();
    drop(staged);
    assert_eq!(bits(&receiver.download(&delivered).unwrap()), bits(&data));
    // A barrier's empty payload takes no device memory (CUDA refuses zero-byte allocations).
    let empty = receiver
        .copy_from_peer(&sender.upload(&[]).unwrap())
        .unwrap();
    assert!(receiver.download(&empty).unwrap().is_empty());
    let (a, b) = (receiver.mark().unwrap(), receiver.mark().unwrap());
    receiver.elapsed_ns(&a, &b).unwrap();
}

/// The layout job's layer kernels against trainer_core::mlp, through `RankDevice` as the local
/// transport calls them: forward, then backward into a gradient that already holds a
/// micro-batch's, on shapes from one unit to more units than a block has threads.
#[test]
fn gpu_mlp_layer_kernels_match_the_cpu_bit_for_bit() {
    let Some(_) = gpu_or_skip("gpu_mlp_layer_kernels_match_the_cpu_bit_for_bit") else {
        return;
    };
    let gpu = Gpu::open(0).expect("GPU 0 opens and the kernels compile");
    let rank = gpu.rank().unwrap();
    for (width, units, batch) in [
        (1, 1, 1),
        (16, 8, 2),
        (64, 64, 3),
        (300, 7, 5),
        (512, 300, 4),
    ] {
        let what = format!("width {width} units {units} batch {batch}");
        let weights = values(width as u64, 2 * units * width);
        let h = values(7, batch * width);
        let g = values(8, batch * width);
        let (mut pre, mut partial) = (vec![0.0; batch * units], vec![0.0; batch * width]);
        trainer_core::mlp::layer_forward(&weights, width, &h, &mut pre, &mut partial);
        let (mut dev_pre, mut dev_partial) = (vec![1.0; batch * units], vec![1.0; batch * width]);
        (rank.layer_forward(&weights, width, &h, &mut dev_pre, &mut dev_partial)).unwrap();
        assert_eq!(bits(&dev_pre), bits(&pre), "pre-activations, {what}");
        assert_eq!(bits(&dev_partial), bits(&partial), "partial output, {what}");

        let mut grad = values(9, 2 * units * width);
        let mut dev_grad = grad.clone();
        let mut dh = vec![0.0; batch * width];
        let mut dev_dh = vec![1.0; batch * width];
        trainer_core::mlp::layer_backward(&weights, width, (&h, &pre, &g), &mut grad, &mut dh);
        (rank.layer_backward(&weights, width, (&h, &pre, &g), &mut dev_grad, &mut dev_dh)).unwrap();
        assert_eq!(bits(&dev_grad), bits(&grad), "weights' gradient, {what}");
        assert_eq!(bits(&dev_dh), bits(&dh), "input's gradient, {what}");
    }
}
