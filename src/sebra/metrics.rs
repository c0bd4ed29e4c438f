//! Test accuracy per group, as UrbanCars reports it (the authors' `_eval_split` in
//! urbancars_trainers/base_trainer.py), from a model's predictions.
//!
//! A cell is (class, cue-1 value, cue-2 value); its accuracy is correct / count. A group's
//! accuracy is the plain mean of the accuracies of its cells (not of its samples), over the
//! cells that hold at least one sample (the authors' mean would be NaN on an empty cell; their
//! test sets have none). Then, with (rho_1, rho_2) the training bias ratios:
//! - in-distribution accuracy I.D. = sum over groups of acc_g x P_train(g), where P_train is
//!   rho_1 rho_2 (both aligned), rho_1 (1 - rho_2) (only the colour), (1 - rho_1) rho_2
//!   (only the texture), (1 - rho_1)(1 - rho_2) (none);
//! - the gap of a cue = the accuracy of the group where that cue alone conflicts minus I.D.
//!   (UrbanCars' "BG" and "CoObj" gaps, with the colour as the first cue), and the gap of both
//!   = accuracy of the group where both conflict minus I.D.;
//! - worst-group accuracy = the least of the four.

use serde::{Deserialize, Serialize};

use super::data::Group;
use crate::error::{LabError, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupAccuracy {
    /// Indexed by `Group::order()`: both aligned, only colour, only texture, none. NaN for a
    /// group with no sample.
    pub per_group: [f64; 4],
    /// Plain accuracy over all samples.
    pub overall: f64,
    pub worst_group: f64,
    pub in_distribution: f64,
    /// Accuracy where the colour conflicts (the texture agrees) minus I.D.
    pub gap_colour: f64,
    /// Accuracy where the texture conflicts (the colour agrees) minus I.D.
    pub gap_texture: f64,
    /// Accuracy where both conflict minus I.D.
    pub gap_both: f64,
}

/// The metrics above for predictions `pred` of samples with `labels`, `cue1`, `cue2` (all in
/// [0, classes)), with the training bias ratios `bias` = (rho_1, rho_2).
pub fn group_accuracy(
    pred: &[u32],
    labels: &[u32],
    cue1: &[u32],
    cue2: &[u32],
    classes: usize,
    bias: (f64, f64),
) -> Result<GroupAccuracy> {
    let n = pred.len();
    if labels.len() != n || cue1.len() != n || cue2.len() != n || n == 0 {
        return Err(LabError::invalid(format!(
            "group accuracy needs one label and two cues per prediction: {n} predictions, {} \
             labels, {} cue-1 and {} cue-2 values",
            labels.len(),
            cue1.len(),
            cue2.len()
        )));
    }
    let k = classes;
    // [class][cue1][cue2] -> (correct, count).
    let mut cells = vec![(0u32, 0u32); k * k * k];
    for i in 0..n {
        let (c, a, b) = (labels[i] as usize, cue1[i] as usize, cue2[i] as usize);
        if c >= k || a >= k || b >= k || pred[i] as usize >= k {
            return Err(LabError::invalid(format!(
                "sample {i}: label {c}, cues ({a}, {b}) and prediction {} must all be below \
                 the {k} classes",
                pred[i]
            )));
        }
        let cell = &mut cells[(c * k + a) * k + b];
        cell.1 += 1;
        if pred[i] == labels[i] {
            cell.0 += 1;
        }
    }
    let mut sums = [(0.0f64, 0u32); 4];
    for c in 0..k {
        for a in 0..k {
            for b in 0..k {
                let (correct, count) = cells[(c * k + a) * k + b];
                if count > 0 {
                    let g = Group::of(c as u32, a as u32, b as u32).order() as usize;
                    sums[g].0 += f64::from(correct) / f64::from(count);
                    sums[g].1 += 1;
                }
            }
        }
    }
    let per_group = sums.map(|(s, cells)| {
        if cells == 0 {
            f64::NAN
        } else {
            s / f64::from(cells)
        }
    });
    let (r1, r2) = bias;
    let p_train = [
        r1 * r2,
        r1 * (1.0 - r2),
        (1.0 - r1) * r2,
        (1.0 - r1) * (1.0 - r2),
    ];
    let in_distribution: f64 = per_group
        .iter()
        .zip(p_train)
        .filter(|(_, p)| *p > 0.0)
        .map(|(a, p)| a * p)
        .sum();
    let worst_group = per_group
        .iter()
        .copied()
        .filter(|a| !a.is_nan())
        .fold(f64::INFINITY, f64::min);
    let correct = pred.iter().zip(labels).filter(|(p, l)| p == l).count();
    Ok(GroupAccuracy {
        per_group,
        overall: correct as f64 / n as f64,
        worst_group,
        in_distribution,
        gap_colour: per_group[Group::TextureAligned.order() as usize] - in_distribution,
        gap_texture: per_group[Group::ColourAligned.order() as usize] - in_distribution,
        gap_both: per_group[Group::NoneAligned.order() as usize] - in_distribution,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two classes, a hand-worked case. Cells (class, cue1, cue2) with (correct/count):
    /// both aligned: (0,0,0) 4/4, (1,1,1) 1/2 -> group 0.75;
    /// only colour:  (0,0,1) 1/2              -> 0.5;
    /// only texture: (1,0,1) 0/1, (0,1,0) 1/1 -> 0.5;
    /// none:         (1,0,0) 0/2              -> 0.
    /// I.D. with rho = (0.9, 0.8): 0.75 x 0.72 + 0.5 x 0.18 + 0.5 x 0.08 + 0 x 0.02 = 0.67.
    #[test]
    fn hand_computed_two_class_case() {
        let rows: [(u32, u32, u32, u32); 12] = [
            // (label, cue1, cue2, prediction)
            (0, 0, 0, 0),
            (0, 0, 0, 0),
            (1, 1, 1, 1),
            (1, 1, 1, 0),
            (0, 0, 1, 0),
            (0, 0, 1, 1),
            (1, 0, 1, 0),
            (0, 1, 0, 0),
            (1, 0, 0, 0),
            (1, 0, 0, 0),
            (0, 0, 0, 0),
            (0, 0, 0, 0),
        ];
        let col = |f: fn(&(u32, u32, u32, u32)) -> u32| rows.iter().map(f).collect::<Vec<u32>>();
        let (labels, c1, c2, pred) = (col(|r| r.0), col(|r| r.1), col(|r| r.2), col(|r| r.3));
        let m = group_accuracy(&pred, &labels, &c1, &c2, 2, (0.9, 0.8)).unwrap();
        assert_eq!(m.per_group, [0.75, 0.5, 0.5, 0.0]);
        assert!(
            (m.in_distribution - 0.67).abs() < 1e-12,
            "{}",
            m.in_distribution
        );
        assert!((m.gap_colour - (0.5 - 0.67)).abs() < 1e-12);
        assert!((m.gap_texture - (0.5 - 0.67)).abs() < 1e-12);
        assert!((m.gap_both - (0.0 - 0.67)).abs() < 1e-12);
        assert_eq!(m.worst_group, 0.0);
        assert!((m.overall - 7.0 / 12.0).abs() < 1e-12);
        let e = group_accuracy(&pred, &labels, &c1, &c2[..3], 2, (0.9, 0.8)).unwrap_err();
        assert!(e.to_string().contains("12 predictions"), "{e}");
        let mut bad = pred.clone();
        bad[0] = 2;
        assert!(group_accuracy(&bad, &labels, &c1, &c2, 2, (0.9, 0.8)).is_err());
    }
}
