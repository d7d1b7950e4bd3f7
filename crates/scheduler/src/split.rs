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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::{SeedableRng, rngs::SmallRng};

    use super::*;

    fn targets(weights: &[Option<u32>]) -> Vec<TargetWeight> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| TargetWeight {
                name: format!("t{i}"),
                weight,
            })
            .collect()
    }

    #[test]
    fn a_90_10_split_lands_within_four_sigma() {
        let targets = targets(&[Some(90), Some(10)]);
        let mut rng = SmallRng::seed_from_u64(90);
        let n = 10_000;
        let stable = (0..n).filter(|_| pick_target(&targets, &mut rng) == Some("t0")).count();
        // σ = √(n·p·(1−p)) = 30, so 4σ = 120.
        assert!((8880..=9120).contains(&stable), "{stable} of {n}");
    }

    #[test]
    fn unset_weights_split_evenly_and_all_zero_picks_nothing() {
        let mut rng = SmallRng::seed_from_u64(1);
        let even = targets(&[None, None]);
        let first = (0..10_000)
            .filter(|_| pick_target(&even, &mut rng) == Some("t0"))
            .count();
        // 5000 ± 4σ, σ = 50.
        assert!((4800..=5200).contains(&first), "{first}");
        assert_eq!(pick_target(&targets(&[Some(0), Some(0)]), &mut rng), None);
        assert_eq!(pick_target(&[], &mut rng), None);
    }

    proptest! {
        #[test]
        fn a_zero_weight_never_receives_traffic(
            weights in prop::collection::vec(prop::option::of(0u32..5), 1..6),
            seed in any::<u64>(),
        ) {
            let targets = targets(&weights);
            let mut rng = SmallRng::seed_from_u64(seed);
            for _ in 0..50 {
                if let Some(name) = pick_target(&targets, &mut rng) {
                    let target = targets.iter().find(|t| t.name == name);
                    prop_assert!(target.is_some_and(|t| t.weight != Some(0)), "{name} from {weights:?}");
                }
            }
        }
    }
}
