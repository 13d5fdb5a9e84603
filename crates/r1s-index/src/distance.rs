//! Inner products over f32 and f16 rows, with a runtime AVX2 + FMA path on x86-64.

/// Dot product over eight lanes (the portable fallback).
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// AVX2 + FMA: four independent 8-lane accumulators (32 floats per iteration) hide the FMA latency;
/// used when the CPU has them (checked once).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    // SAFETY: every load reads 8 floats at offsets i..i+8 < n of both slices (loop bounds below).
    unsafe {
        let (mut s0, mut s1, mut s2, mut s3) =
            (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
        while i + 32 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)), s1);
            s2 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 16)), _mm256_loadu_ps(pb.add(i + 16)), s2);
            s3 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 24)), _mm256_loadu_ps(pb.add(i + 24)), s3);
            i += 32;
        }
        while i + 8 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
        let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        let mut acc = _mm_cvtss_f32(h);
        while i < n {
            acc += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        acc
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Inner product of two equal-length vectors.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { dot_avx2(a, b) };
    }
    dot_portable(a, b)
}

/// Inner products of `q` with four rows at once: the query is loaded once per step for all four, and
/// the four rows stream from memory side by side (two 8-lane accumulators each).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot4_avx2(q: &[f32], r: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = r.iter().fold(q.len(), |n, v| n.min(v.len()));
    let (pq, p) = (q.as_ptr(), r.map(<[f32]>::as_ptr));
    let mut i = 0;
    // SAFETY: every load reads 8 floats at offsets below n, the shortest of the five slices.
    unsafe {
        let mut a = [_mm256_setzero_ps(); 4];
        let mut b = [_mm256_setzero_ps(); 4];
        while i + 16 <= n {
            let (q0, q1) = (_mm256_loadu_ps(pq.add(i)), _mm256_loadu_ps(pq.add(i + 8)));
            for j in 0..4 {
                a[j] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(p[j].add(i)), a[j]);
                b[j] = _mm256_fmadd_ps(q1, _mm256_loadu_ps(p[j].add(i + 8)), b[j]);
            }
            i += 16;
        }
        let mut out = [0f32; 4];
        for j in 0..4 {
            let s = _mm256_add_ps(a[j], b[j]);
            let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
            out[j] = _mm_cvtss_f32(h);
            for t in i..n {
                out[j] += *pq.add(t) * *p[j].add(t);
            }
        }
        out
    }
}

/// Inner products of `q` with four equal-length rows.
#[inline]
pub fn dot4(q: &[f32], r: [&[f32]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { dot4_avx2(q, r) };
    }
    r.map(|v| dot_portable(q, v))
}

/// Inner product of an f32 vector with a row stored as f16 bits, converted eight at a time.
#[inline]
pub fn dot_f16(a: &[f32], b: &[u16]) -> f32 {
    let mut acc = 0.0f32;
    let mut buf = [0f32; 64];
    for (x, y) in a.chunks(64).zip(b.chunks(64)) {
        for (o, &bits) in buf.iter_mut().zip(y) {
            *o = half::f16::from_bits(bits).to_f32();
        }
        acc += dot(x, &buf[..x.len()]);
    }
    acc
}

/// Asks the CPU to start loading the cache line at `p` (a hint; no effect elsewhere).
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_agree_with_a_plain_sum() {
        let a: Vec<f32> = (0..131).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..131).map(|i| (i as f32 * 0.11).cos()).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - want).abs() < 1e-4);
        let four = dot4(&a, [&b, &a, &b[..], &a]);
        let aa: f32 = a.iter().map(|x| x * x).sum();
        for (got, want) in four.iter().zip([want, aa, want, aa]) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        let bits: Vec<u16> = b.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect();
        let rounded: f32 = a.iter().zip(&bits).map(|(x, &y)| x * half::f16::from_bits(y).to_f32()).sum();
        assert!((dot_f16(&a, &bits) - rounded).abs() < 1e-4);
    }
}
