//! Everything random in training derives from a seed through SplitMix64: per-step question orders,
//! sampling seeds, LoRA initialisation, seeded shuffles. A leaf module, so that the model, the task
//! and the trainer share it without importing each other.

/// SplitMix64 of `(a, b)`: every per-step random choice derives from it.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in `[0, 1)` from [`mix`]`(a, b)` (its top 53 bits).
pub fn unit(a: u64, b: u64) -> f64 {
    (mix(a, b) >> 11) as f64 / (1u64 << 53) as f64
}

/// The seed of the LoRA adapters that stage `stage` starts with.
pub fn lora_seed(seed: u64, stage: usize) -> u64 {
    mix(seed ^ 0x4C6F_5241, stage as u64)
}

/// The `count` question indices of step `step`: passes over the data, each in its own seeded order.
pub fn step_questions(n: usize, seed: u64, step: usize, count: usize) -> Vec<usize> {
    let perm = |epoch: usize| {
        let mut idx: Vec<usize> = (0..n).collect();
        shuffle(&mut idx, mix(seed, epoch as u64));
        idx
    };
    let mut out = Vec::with_capacity(count);
    let mut cached: Option<(usize, Vec<usize>)> = None;
    for k in step * count..(step + 1) * count {
        let epoch = k / n;
        if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
            cached = Some((epoch, perm(epoch)));
        }
        if let Some((_, p)) = &cached {
            out.push(p[k % n]);
        }
    }
    out
}

/// A seeded shuffle.
pub fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut s = seed;
    for i in (1..v.len()).rev() {
        s = mix(s, i as u64);
        v.swap(i, (s % (i as u64 + 1)) as usize);
    }
}
