//! The proxy a layout job trains: an MLP of `layers` residual blocks of width `width`,
//! `h <- h + W2 relu(W1 h)`, learning to map a sample `x` to `x` rotated by one element.
//!
//! Each block's two matrices are split the Megatron-LM way across `tp` ranks: `W1` by rows
//! (column-parallel: each rank computes its slice of the hidden units) and `W2` by columns
//! (row-parallel: each rank's slice of the hidden units gives a partial output), so the TP
//! ranks' partial outputs are summed, by an all-reduce in the TP group, once in the forward
//! pass and once (the input's gradient) in the backward pass. `W2` is stored transposed so
//! that both matrices of a rank are one block of rows. The layers are cut into contiguous
//! stages of a pipeline.
//!
//! Data and initial weights are pure functions of the data seed and an index, as in
//! `model.rs`: a counter hash, the same whatever the layout, so every layout trains the same
//! model on the same samples. Every sum runs in one fixed order (inputs, then hidden units, then
//! samples, each ascending) with plain IEEE-754 operations and no fused multiply-add.

use std::ops::Range;

use crate::digest::mix64;
use crate::layout::part_range;

/// A uniform number in `[-1, 1)` from a 64-bit hash; 24 bits so the conversion is exact.
fn unit(hash: u64) -> f32 {
    ((hash >> 40) as f32) * (2.0 / (1u64 << 24) as f32) - 1.0
}

fn hash3(seed: u64, a: u64, b: u64) -> u64 {
    mix64(mix64(seed ^ mix64(a)) ^ b)
}

/// Keeps the weights' hash stream apart from the samples'.
const WEIGHT_STREAM: u64 = u64::MAX - 1;

/// The id of sample `index` of the global batch of `step`.
pub fn sample_id(step: u64, index: usize) -> u64 {
    (step << 40) ^ index as u64
}

/// Element `j` of sample `sample_id`'s input.
fn input(data_seed: u64, sample_id: u64, j: usize) -> f32 {
    unit(hash3(data_seed, sample_id, j as u64))
}

/// The inputs of `count` consecutive samples of `step`'s global batch from `first`, row by row.
pub fn inputs(data_seed: u64, step: u64, first: usize, count: usize, width: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(count * width);
    for sample in first..first + count {
        let id = sample_id(step, sample);
        out.extend((0..width).map(|j| input(data_seed, id, j)));
    }
    out
}

/// The part of the proxy one rank holds: the layers of its stage and, in each, its block of
/// `width / tp` hidden units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardShape {
    pub width: usize,
    pub layers: Range<usize>,
    pub tp_rank: usize,
    pub tp: usize,
}

impl ShardShape {
    /// The whole proxy of `layers` layers, unsplit: the host reference's shape.
    pub fn whole(layers: usize, width: usize) -> ShardShape {
        ShardShape {
            width,
            layers: 0..layers,
            tp_rank: 0,
            tp: 1,
        }
    }

    /// The hidden units this rank holds.
    pub fn units(&self) -> Range<usize> {
        part_range(self.width, self.tp, self.tp_rank)
    }

    /// Parameters of one layer on this rank: its rows of `W1`, then of `W2` transposed.
    pub fn layer_params(&self) -> usize {
        2 * self.units().len() * self.width
    }

    pub fn param_count(&self) -> usize {
        self.layers.len() * self.layer_params()
    }

    /// Where this rank's parameter `local` sits in the whole proxy's parameters, laid out
    /// layer by layer as `W1` (width x width) then `W2` transposed, row-major.
    pub fn global_index(&self, local: usize) -> usize {
        let (per_layer, rows) = (self.layer_params(), self.units().len());
        let (layer, within) = (local / per_layer, local % per_layer);
        let (matrix, within) = (within / (rows * self.width), within % (rows * self.width));
        let (row, col) = (within / self.width, within % self.width);
        let whole = 2 * self.width * self.width;
        (self.layers.start + layer) * whole
            + matrix * self.width * self.width
            + (self.units().start + row) * self.width
            + col
    }

    /// This rank's initial parameters: each a hash of its global index, scaled by a power of
    /// two near `1 / sqrt(width)` (so the scaling is exact).
    pub fn initial_params(&self, data_seed: u64) -> Vec<f32> {
        let scale = 0.5f32.powi((usize::BITS - self.width.leading_zeros()).div_ceil(2) as i32);
        (0..self.param_count())
            .map(|local| {
                let global = self.global_index(local) as u64;
                unit(hash3(data_seed, WEIGHT_STREAM, global)) * scale
            })
            .collect()
    }
}

/// One layer's forward on this rank's units for a batch `h` (`batch x width`): the
/// pre-activations (`batch x units`) and the partial output (`batch x width`) that the TP
/// ranks' partial outputs are summed with.
pub fn layer_forward(
    weights: &[f32],
    width: usize,
    h: &[f32],
    pre: &mut [f32],
    partial: &mut [f32],
) {
    let units = weights.len() / (2 * width);
    let (w1, w2t) = weights.split_at(units * width);
    for ((h, pre), partial) in (h.chunks_exact(width))
        .zip(pre.chunks_exact_mut(units))
        .zip(partial.chunks_exact_mut(width))
    {
        partial.fill(0.0);
        for (f, a) in pre.iter_mut().enumerate() {
            let row = &w1[f * width..(f + 1) * width];
            let mut sum = 0.0f32;
            for (w, x) in row.iter().zip(h) {
                sum += *w * *x;
            }
            *a = sum;
            let u = sum.max(0.0);
            for (p, w) in partial.iter_mut().zip(&w2t[f * width..(f + 1) * width]) {
                *p += u * *w;
            }
        }
    }
}

/// One layer's backward on this rank's units: from the gradient `g` at the layer's output,
/// its input `h` and the pre-activations `pre` of the forward pass, adds the weights'
/// gradient into `grad` and writes the partial gradient of the input (`batch x width`, before
/// the TP sum; the residual's `g` is not in it).
pub fn layer_backward(
    weights: &[f32],
    width: usize,
    (h, pre, g): (&[f32], &[f32], &[f32]),
    grad: &mut [f32],
    partial_dh: &mut [f32],
) {
    let units = weights.len() / (2 * width);
    let (w1, w2t) = weights.split_at(units * width);
    let (g1, g2t) = grad.split_at_mut(units * width);
    for (((h, pre), g), dh) in (h.chunks_exact(width))
        .zip(pre.chunks_exact(units))
        .zip(g.chunks_exact(width))
        .zip(partial_dh.chunks_exact_mut(width))
    {
        dh.fill(0.0);
        for (f, &a) in pre.iter().enumerate() {
            let rows = f * width..(f + 1) * width;
            let mut du = 0.0f32;
            for (w, gj) in w2t[rows.clone()].iter().zip(g) {
                du += *w * *gj;
            }
            let u = a.max(0.0);
            for (gw, gj) in g2t[rows.clone()].iter_mut().zip(g) {
                *gw += u * *gj;
            }
            let da = if a > 0.0 { du } else { 0.0 };
            for ((gw, x), (d, w)) in
                (g1[rows.clone()].iter_mut().zip(h)).zip(dh.iter_mut().zip(&w1[rows]))
            {
                *gw += da * *x;
                *d += *w * da;
            }
        }
    }
}

/// The loss of a batch's outputs `out` against its inputs `x` (the target is `x` rotated by
/// one element): the sum over the batch of each sample's mean squared error, over
/// `global_batch`; and its gradient with respect to `out`.
pub fn loss_and_output_grad(
    out: &[f32],
    x: &[f32],
    width: usize,
    global_batch: usize,
) -> (f32, Vec<f32>) {
    let inv_width = 1.0 / width as f32;
    let inv_batch = 1.0 / global_batch as f32;
    let mut grad = vec![0.0f32; out.len()];
    let mut loss = 0.0f32;
    for ((o, x), g) in out
        .chunks_exact(width)
        .zip(x.chunks_exact(width))
        .zip(grad.chunks_exact_mut(width))
    {
        let mut sample = 0.0f32;
        for j in 0..width {
            let error = o[j] - x[(j + 1) % width];
            sample += error * error;
            g[j] = 2.0 * error * inv_width * inv_batch;
        }
        loss += sample * inv_width;
    }
    (loss * inv_batch, grad)
}

/// The host reference: the whole proxy in one process, on the whole global batch of `step`
/// (`global_batch` samples) at once. Returns the mean loss and the gradient of `params`.
pub fn reference_loss_and_grad(
    shape: &ShardShape,
    params: &[f32],
    data_seed: u64,
    step: u64,
    global_batch: usize,
) -> (f32, Vec<f32>) {
    assert_eq!(shape.tp, 1, "the reference holds whole layers");
    let width = shape.width;
    let per_layer = shape.layer_params();
    let x = inputs(data_seed, step, 0, global_batch, width);
    let mut hs = vec![x.clone()];
    let mut pres = Vec::new();
    for layer in params.chunks_exact(per_layer) {
        let h = hs.last().expect("the input");
        let mut pre = vec![0.0f32; global_batch * width];
        let mut out = vec![0.0f32; global_batch * width];
        layer_forward(layer, width, h, &mut pre, &mut out);
        crate::kernels::add_assign(&mut out, h);
        hs.push(out);
        pres.push(pre);
    }
    let (loss, mut g) =
        loss_and_output_grad(hs.last().expect("an output"), &x, width, global_batch);
    let mut grad = vec![0.0f32; params.len()];
    for (idx, layer) in params.chunks_exact(per_layer).enumerate().rev() {
        let mut dh = vec![0.0f32; global_batch * width];
        let layer_grad = &mut grad[idx * per_layer..(idx + 1) * per_layer];
        layer_backward(
            layer,
            width,
            (&hs[idx], &pres[idx], &g),
            layer_grad,
            &mut dh,
        );
        crate::kernels::add_assign(&mut g, &dh);
    }
    (loss, grad)
}

#[cfg(test)]
mod tests;
