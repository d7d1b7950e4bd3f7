//! The weighted targetModels split (canary): which target model serves a request.

use rand::Rng;

/// One target model and its weight; weights are relative, `None` everywhere means equal split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetWeight {
    pub name: String,
    pub weight: Option<u32>,
}

/// Picks a target by weight. Returns `None` only for an empty list or when every weight is zero.
pub fn pick_target<'a, R: Rng + ?Sized>(targets: &'a [TargetWeight], rng: &mut R) -> Option<&'a str> {
    let weight = |t: &TargetWeight| u64::from(t.weight.unwrap_or(1));
    let total: u64 = targets.iter().map(weight).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = rng.random_range(0..total);
    for target in targets {
        let w = weight(target);
        if ticket < w {
            return Some(&target.name);
        }
        ticket -= w;
    }
    None
}
