//! Reference CPU kernels. Each sums in one fixed order with plain IEEE-754 operations and no
//! fused multiply-add, so a GPU kernel compiled with `--fmad=false` gives the same bits.

/// Asks the CPU to start loading `values` into cache (every line; x86-64 only, elsewhere
/// nothing). A hint: it reads nothing architecturally, cannot fault and changes no value.
#[inline(always)]
pub fn prefetch(values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..std::mem::size_of_val(values)).step_by(64) {
        // SAFETY: the address stays inside `values`; `_mm_prefetch` reads nothing
        // architecturally and does not fault on any address.
        #[allow(unsafe_code)]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                values.as_ptr().cast::<i8>().wrapping_add(offset),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

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
