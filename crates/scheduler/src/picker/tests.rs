//! Behaviour of each picker, plus the property that a picker only returns candidates.

use proptest::prelude::*;
use rand::{SeedableRng, rngs::SmallRng};

use super::*;

fn pickers() -> [PickerConfig; 3] {
    [
        PickerConfig::MaxScore {},
        PickerConfig::WeightedRandom {},
        PickerConfig::Random {},
    ]
}

#[test]
fn max_score_ranks_by_total() {
    let totals = [0.5, 3.0, 1.0, 2.0];
    let ranked = MaxScorePicker.rank(&[0, 1, 2, 3], &totals, 4, &mut SmallRng::seed_from_u64(1));
    assert_eq!(ranked, vec![1, 3, 2, 0]);
}

#[test]
fn max_score_ranks_the_rest_by_score_for_fallbacks() {
    let totals = [0.5, 3.0, 1.0, 2.0, 2.5];
    let ranked = MaxScorePicker.rank(&[0, 1, 2, 3, 4], &totals, 3, &mut SmallRng::seed_from_u64(1));
    assert_eq!(ranked, vec![1, 4, 3]);
}

#[test]
fn max_score_breaks_ties_at_random() {
    let totals = [1.0, 1.0, 0.0];
    let mut rng = SmallRng::seed_from_u64(1);
    let mut wins = [0u32; 3];
    for _ in 0..1000 {
        wins[MaxScorePicker.rank(&[0, 1, 2], &totals, 1, &mut rng)[0]] += 1;
    }
    assert_eq!(wins[2], 0);
    assert!(wins[0] > 400 && wins[1] > 400, "{wins:?}");
}

#[test]
fn weighted_random_picks_in_proportion_to_the_total() {
    let totals = [3.0, 1.0, 0.0];
    let mut rng = SmallRng::seed_from_u64(2);
    let mut wins = [0u32; 3];
    let n = 10_000;
    for _ in 0..n {
        wins[WeightedRandomPicker.rank(&[0, 1, 2], &totals, 2, &mut rng)[0]] += 1;
    }
    // Expect 7500 ± 4σ with σ = √(n·p·(1−p)) ≈ 43.
    assert!((7327..=7673).contains(&wins[0]), "{wins:?}");
    assert_eq!(wins[2], 0);
}

#[test]
fn random_is_uniform() {
    let mut rng = SmallRng::seed_from_u64(3);
    let mut wins = [0u32; 4];
    for _ in 0..8000 {
        wins[RandomPicker.rank(&[0, 1, 2, 3], &[9.0, 0.0, 0.0, 0.0], 3, &mut rng)[0]] += 1;
    }
    // 2000 ± 4σ, σ ≈ 39.
    assert!(wins.iter().all(|&w| (1845..=2155).contains(&w)), "{wins:?}");
}

proptest! {
    #[test]
    fn a_picker_only_returns_candidates(
        totals in prop::collection::vec(0.0..10.0f64, 1..20),
        subset in prop::collection::vec(any::<bool>(), 20),
        limit in 0usize..25,
        seed in any::<u64>(),
    ) {
        let candidates: Vec<usize> = (0..totals.len()).filter(|&i| subset[i]).collect();
        for picker in pickers() {
            let name = picker.as_picker().name();
            let ranked = picker.as_picker().rank(&candidates, &totals, limit, &mut SmallRng::seed_from_u64(seed));
            prop_assert_eq!(ranked.len(), limit.min(candidates.len()), "{}", name);
            let mut distinct = ranked.clone();
            distinct.sort_unstable();
            distinct.dedup();
            prop_assert_eq!(distinct.len(), ranked.len(), "{} repeated a candidate", name);
            prop_assert!(ranked.iter().all(|idx| candidates.contains(idx)), "{}: {:?} from {:?}", name, ranked, candidates);
        }
    }
}
