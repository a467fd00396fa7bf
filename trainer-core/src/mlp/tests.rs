//! The proxy's math: the reference's gradient against finite differences, and every split of
//! the proxy (TP and PP in {1, 2, 4}, DP in {1, 2}) against the reference over SGD steps.

use super::*;

const SEED: u64 = 0x5eed;

/// The reference's gradient against central differences of its loss: the layer math is right
/// before any split is compared with it.
#[test]
fn the_reference_gradient_matches_finite_differences() {
    let shape = ShardShape::whole(3, 6);
    let params = shape.initial_params(SEED);
    let (_, grad) = reference_loss_and_grad(&shape, &params, SEED, 0, 5);
    let scale = grad.iter().fold(0.0f32, |m, g| m.max(g.abs()));
    assert!(scale > 1e-3, "a gradient to check: {scale}");
    // Two step sizes: a step across a ReLU's kink spoils one of them, not both.
    for idx in (0..params.len()).step_by(5) {
        let error = |eps: f32| {
            let loss_at = |delta: f32| {
                let mut p = params.clone();
                p[idx] += delta;
                reference_loss_and_grad(&shape, &p, SEED, 0, 5).0 as f64
            };
            let numeric = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps as f64);
            (numeric - grad[idx] as f64).abs()
        };
        let error = error(1e-2).min(error(1e-3));
        assert!(
            error < 2e-3 * scale as f64 + 1e-5,
            "param {idx}: off by {error}"
        );
    }
}

/// One stage's layers' inputs and each TP rank's pre-activations, from forward to backward.
type Saved = Vec<(Vec<f32>, Vec<Vec<f32>>)>;

/// One split of the proxy, trained on the host: `tp * pp` shards, each held by `dp` replicas
/// that start equal and stay so, so one copy per shard is kept.
struct Split {
    shapes: Vec<ShardShape>,
    params: Vec<Vec<f32>>,
    tp: usize,
    pp: usize,
    dp: usize,
    micro_batches: usize,
    micro_batch_size: usize,
}

impl Split {
    fn new(
        layers: usize,
        width: usize,
        (tp, pp, dp): (usize, usize, usize),
        m: usize,
        b: usize,
    ) -> Split {
        let shapes: Vec<ShardShape> = (0..pp)
            .flat_map(|stage| {
                (0..tp).map(move |tp_rank| ShardShape {
                    width,
                    layers: part_range(layers, pp, stage),
                    tp_rank,
                    tp,
                })
            })
            .collect();
        let params = shapes.iter().map(|s| s.initial_params(SEED)).collect();
        Split {
            shapes,
            params,
            tp,
            pp,
            dp,
            micro_batches: m,
            micro_batch_size: b,
        }
    }

    fn global_batch(&self) -> usize {
        self.dp * self.micro_batches * self.micro_batch_size
    }

    /// The TP ranks' partial results summed in TP-rank order, as a TP all-reduce would.
    fn tp_sum(partials: &[Vec<f32>]) -> Vec<f32> {
        let mut sum = partials[0].clone();
        for p in &partials[1..] {
            crate::kernels::add_assign(&mut sum, p);
        }
        sum
    }

    /// One micro-batch through every stage and back; its loss, its gradients added to `grads`.
    fn micro_batch(&self, step: u64, first: usize, grads: &mut [Vec<f32>]) -> f32 {
        let (width, b) = (self.shapes[0].width, self.micro_batch_size);
        let x = inputs(SEED, step, first, b, width);
        // Per stage, per layer: the input and each TP rank's pre-activations.
        let mut saved: Vec<Saved> = vec![Vec::new(); self.pp];
        let mut h = x.clone();
        for (stage, saved) in saved.iter_mut().enumerate() {
            let shards = stage * self.tp..(stage + 1) * self.tp;
            for layer in 0..self.shapes[shards.start].layers.len() {
                let mut pres = Vec::new();
                let mut partials = Vec::new();
                for shard in shards.clone() {
                    let per = self.shapes[shard].layer_params();
                    let weights = &self.params[shard][layer * per..(layer + 1) * per];
                    let mut pre = vec![0.0; b * self.shapes[shard].units().len()];
                    let mut partial = vec![0.0; b * width];
                    layer_forward(weights, width, &h, &mut pre, &mut partial);
                    pres.push(pre);
                    partials.push(partial);
                }
                let mut out = Self::tp_sum(&partials);
                crate::kernels::add_assign(&mut out, &h);
                saved.push((std::mem::replace(&mut h, out), pres));
            }
        }
        let (loss, mut g) = loss_and_output_grad(&h, &x, width, self.global_batch());
        for stage in (0..self.pp).rev() {
            let shards = stage * self.tp..(stage + 1) * self.tp;
            for (layer, (input, pres)) in saved[stage].iter().enumerate().rev() {
                let mut partials = Vec::new();
                for (k, shard) in shards.clone().enumerate() {
                    let per = self.shapes[shard].layer_params();
                    let span = layer * per..(layer + 1) * per;
                    let mut dh = vec![0.0; b * width];
                    let grad = &mut grads[shard][span.clone()];
                    let weights = &self.params[shard][span];
                    layer_backward(weights, width, (input, &pres[k], &g), grad, &mut dh);
                    partials.push(dh);
                }
                crate::kernels::add_assign(&mut g, &Self::tp_sum(&partials));
            }
        }
        loss
    }

    /// One step: every replica's micro-batches, the replicas' gradients summed in DP-rank
    /// order, one SGD update. Returns the loss and each shard's summed gradient.
    fn step(&mut self, step: u64, lr: f32) -> (f32, Vec<Vec<f32>>) {
        let mut total: Vec<Vec<f32>> = self.params.iter().map(|p| vec![0.0; p.len()]).collect();
        let mut loss = 0.0f32;
        for replica in 0..self.dp {
            let mut grads: Vec<Vec<f32>> = self.params.iter().map(|p| vec![0.0; p.len()]).collect();
            for mb in 0..self.micro_batches {
                let first = (replica * self.micro_batches + mb) * self.micro_batch_size;
                loss += self.micro_batch(step, first, &mut grads);
            }
            for (t, g) in total.iter_mut().zip(&grads) {
                crate::kernels::add_assign(t, g);
            }
        }
        for (p, g) in self.params.iter_mut().zip(&total) {
            crate::kernels::sgd_update(p, g, lr);
        }
        (loss, total)
    }
}

/// For every split with TP and PP in {1, 2, 4} and DP in {1, 2}, over a fixed global batch of
/// 16 samples and four SGD steps: the loss within 1e-5 of the reference's, relative, and every
/// shard's gradient within 1e-5 of the reference's, relative to the largest.
#[test]
fn every_split_trains_as_the_reference_does() {
    let (layers, width, lr) = (4, 8, 0.2);
    for tp in [1, 2, 4] {
        for pp in [1, 2, 4] {
            for dp in [1, 2] {
                let m = 4;
                let mut split = Split::new(layers, width, (tp, pp, dp), m, 16 / (dp * m));
                let whole = ShardShape::whole(layers, width);
                let mut reference = whole.initial_params(SEED);
                for step in 0..4 {
                    let (want_loss, want) =
                        reference_loss_and_grad(&whole, &reference, SEED, step, 16);
                    let (loss, grads) = split.step(step, lr);
                    let case = format!("tp {tp} pp {pp} dp {dp} step {step}");
                    assert!(
                        (loss - want_loss).abs() <= 1e-5 * want_loss.abs(),
                        "{case}: {loss} vs {want_loss}"
                    );
                    let scale = want.iter().fold(0.0f32, |m, g| m.max(g.abs()));
                    for (shape, grad) in split.shapes.iter().zip(&grads) {
                        for (local, g) in grad.iter().enumerate() {
                            let w = want[shape.global_index(local)];
                            assert!((g - w).abs() <= 1e-5 * scale, "{case}: {g} vs {w}");
                        }
                    }
                    crate::kernels::sgd_update(&mut reference, &want, lr);
                }
            }
        }
    }
}

/// The shards' global indices cover the whole proxy once.
#[test]
fn shards_cover_the_proxy_once() {
    let (layers, width) = (5, 8);
    let whole = ShardShape::whole(layers, width).param_count();
    for (tp, pp) in [(1, 1), (2, 3), (4, 5), (8, 2)] {
        let mut seen = vec![false; whole];
        for stage in 0..pp {
            for tp_rank in 0..tp {
                let shape = ShardShape {
                    width,
                    layers: part_range(layers, pp, stage),
                    tp_rank,
                    tp,
                };
                for local in 0..shape.param_count() {
                    let global = shape.global_index(local);
                    assert!(
                        !std::mem::replace(&mut seen[global], true),
                        "tp {tp} pp {pp}"
                    );
                }
            }
        }
        assert!(seen.iter().all(|&s| s));
    }
}

/// Training goes somewhere: the loss falls over a few steps of the reference.
#[test]
fn the_reference_learns() {
    let whole = ShardShape::whole(2, 8);
    let mut params = whole.initial_params(SEED);
    let mut losses = Vec::new();
    for step in 0..30 {
        let (loss, grad) = reference_loss_and_grad(&whole, &params, SEED, step, 16);
        losses.push(loss);
        crate::kernels::sgd_update(&mut params, &grad, 0.3);
    }
    assert!(losses[29] < 0.8 * losses[0], "{losses:?}");
}
