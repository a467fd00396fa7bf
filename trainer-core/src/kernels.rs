//! Reference CPU kernels. Each sums in one fixed order with plain IEEE-754 operations and no
//! fused multiply-add, so a GPU kernel compiled with `--fmad=false` gives the same bits.

pub fn add_assign(acc: &mut [f32], src: &[f32]) {
    assert_eq!(acc.len(), src.len());
    for (a, s) in acc.iter_mut().zip(src) {
        *a += *s;
    }
}

pub fn sgd_update(params: &mut [f32], grad: &[f32], lr: f32) {
    assert_eq!(params.len(), grad.len());
    for (p, g) in params.iter_mut().zip(grad) {
        *p -= lr * *g;
    }
}

pub fn scale(values: &mut [f32], factor: f32) {
    for v in values {
        *v *= factor;
    }
}
