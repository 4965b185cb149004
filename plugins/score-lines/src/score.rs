//! The scoring function, shared with the native side of the benchmark.

/// Scores `n` synthetic order lines derived from `seed`: a compute-bound
/// loop with floating point and integer work, no allocation. (It uses masks,
/// not `%`: wasm has no 64-bit multiply-high, so LLVM cannot turn a 64-bit
/// remainder by a constant into multiplications there as it does natively;
/// a `%`-heavy loop measured 3.5x slower as a plugin. Small integers become
/// floats through `u32`: Cranelift turns a `u64` → `f64` conversion into a
/// sequence whose `cvtsi2sd` keeps a false dependency on the register's
/// previous value, which chains every iteration to the last one's divide
/// and square root; measured 4.5x slower as a plugin, see plugins/README.md.)
pub fn score(n: u64, seed: u64) -> f64 {
    score_with(n, seed, |amount| {
        if amount > 5_000.0 {
            0.3
        } else if amount > 1_000.0 {
            0.1
        } else {
            0.01
        }
    })
}

/// The next synthetic line's amount (quantity × price) from the generator state.
#[inline(always)]
fn next_amount(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    let qty = f64::from(((*state & 127) + 1) as u32);
    let price = f64::from(((*state >> 8) & 0x3fff) as u32) / 100.0;
    qty * price
}

/// Sums the weighted scores of `n` lines, with `risk` of each line's amount.
#[inline(always)]
fn score_with(n: u64, seed: u64, risk: impl Fn(f64) -> f64) -> f64 {
    let mut state = seed | 1;
    let mut total = 0.0f64;
    for i in 0..n {
        let amount = next_amount(&mut state);
        total += risk(amount) * (1.0 + f64::from((i & 7) as u32) * 0.05) * amount.sqrt();
    }
    total
}

/// [`score`] with the risk chosen in integer thousandths instead of between
/// floats. Cranelift compiles a choice between floats into a branch, which
/// mispredicts on this data, and a choice between integers into a `cmov`;
/// LLVM, natively, does the opposite here. The benchmark runs both, so the
/// figures show what the formulation costs on each side.
pub fn score_int_choice(n: u64, seed: u64) -> f64 {
    score_with(n, seed, |amount| {
        let risk_milli = 10 + 90 * u32::from(amount > 1_000.0) + 200 * u32::from(amount > 5_000.0);
        f64::from(risk_milli) * 0.001
    })
}
