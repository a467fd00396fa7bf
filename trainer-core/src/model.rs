//! The small real model every rank trains: linear regression `y = w . x` on seeded synthetic
//! data. Small enough for 100,000 ranks to carry real numbers, real enough that a corrupted
//! gradient or parameter shows up in the loss and the parameter digest.
//!
//! Data is a pure function of (data seed, rank, step, sample): a counter hash, not a stateful
//! random stream, so a rank that restarts at step `s` sees exactly the batch it saw before and
//! the data does not depend on the run's seed or on the order ranks run in.

use crate::digest::mix64;

/// A uniform number in `[-1, 1)` from a 64-bit hash; 24 bits so the conversion is exact.
fn unit(hash: u64) -> f32 {
    ((hash >> 40) as f32) * (2.0 / (1u64 << 24) as f32) - 1.0
}

fn hash3(seed: u64, a: u64, b: u64) -> u64 {
    mix64(mix64(seed ^ mix64(a)) ^ b)
}

/// The weights the data was generated from.
pub fn true_weight(data_seed: u64, idx: usize) -> f32 {
    unit(hash3(data_seed, u64::MAX, idx as u64))
}

/// Feature `idx` of sample `sample` that `rank` trains on at `step`.
fn feature(data_seed: u64, sample_id: u64, idx: usize) -> f32 {
    unit(hash3(data_seed, sample_id, idx as u64))
}

fn sample_id(rank: usize, step: u64, sample: usize, batch: usize) -> u64 {
    (step << 40) ^ ((rank as u64) * batch as u64 + sample as u64)
}

/// Computes the mean-squared-error loss of `params` on this rank's batch for `step`, and writes
/// its gradient into `grad`. Sums run in a fixed order.
pub fn loss_and_gradient(
    params: &[f32],
    data_seed: u64,
    rank: usize,
    step: u64,
    batch: usize,
    grad: &mut [f32],
) -> f32 {
    let dim = params.len();
    assert_eq!(grad.len(), dim);
    grad.fill(0.0);
    let mut features = vec![0.0f32; dim];
    let mut loss = 0.0f32;
    for sample in 0..batch {
        let id = sample_id(rank, step, sample, batch);
        let mut target = 0.0f32;
        let mut prediction = 0.0f32;
        for (i, x) in features.iter_mut().enumerate() {
            *x = feature(data_seed, id, i);
            target += true_weight(data_seed, i) * *x;
            prediction += params[i] * *x;
        }
        let error = prediction - target;
        loss += error * error;
        let factor = 2.0 * error;
        for (g, x) in grad.iter_mut().zip(&features) {
            *g += factor * *x;
        }
    }
    let inv_batch = 1.0 / batch as f32;
    for g in grad.iter_mut() {
        *g *= inv_batch;
    }
    loss * inv_batch
}
