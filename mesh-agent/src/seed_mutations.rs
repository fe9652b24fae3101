//! Deterministic mutations of fuzz seeds, for the unit tests of the fuzz harnesses: the same
//! inputs every run, so that a failure reproduces (cargo-fuzz explores at random instead).

/// `count` mutations of `seed`: one byte replaced, and the rest sometimes cut off.
pub fn mutations(seed: &[u8], count: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
    // xorshift64, seeded by the input's length so that each seed gets its own sequence.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed.len() as u64;
    (0..count).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut input = seed.to_vec();
        if !input.is_empty() {
            let at = (x as usize) % input.len();
            input[at] = (x >> 32) as u8;
            if x & 1 == 1 {
                input.truncate(at + 1 + (x >> 40) as usize % input.len());
            }
        }
        input
    })
}

/// Runs `fuzz_one` on each seed and on `count` mutations of each.
pub fn run_on_seeds(seeds: &[&[u8]], count: usize, fuzz_one: impl Fn(&[u8])) {
    for seed in seeds {
        fuzz_one(seed);
        for input in mutations(seed, count) {
            fuzz_one(&input);
        }
    }
}
