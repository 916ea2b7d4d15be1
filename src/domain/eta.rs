//! ETA to the target SoC, taper-aware (DOMAIN.md "ETA to target SoC").
//!
//! Preference order: the vehicle's own remaining time; else remaining energy (from the
//! observed kWh per % SoC, learned online, or a battery-size guess) over a power curve.
//! DC charging holds near peak power to about 55 % and then tapers, so dividing the
//! remaining energy by the present power (the linear method) badly underestimates the
//! time on DC; AC charging is flat enough for the linear method.

use serde::{Deserialize, Serialize};

use super::thresholds::ChargerKind;

/// Energy delivered per % SoC when nothing has been learned yet: a ~80 kWh usable pack
/// plus charging losses, typical of the cars this lounge serves.
pub const DEFAULT_KWH_PER_PCT: f64 = 0.85;

/// A SoC span shorter than this gives a kWh/% estimate dominated by the SoC's integer
/// rounding, so it is not learned from.
const MIN_LEARN_SPAN_PCT: f64 = 2.0;

/// Plausible kWh per % (10–500 kWh packs); outside it the inputs are inconsistent.
const KWH_PER_PCT_RANGE: (f64, f64) = (0.1, 5.0);

/// DC power-vs-SoC curve as a fraction of peak: flat to 55 %, linear taper to 25 % of
/// peak at 80 %, then to 8 % at 100 % (balancing tail).
const DC_CURVE: [(f64, f64); 4] = [(0.0, 1.0), (55.0, 1.0), (80.0, 0.25), (100.0, 0.08)];

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EtaInput {
    pub kind: ChargerKind,
    pub soc_pct: Option<f64>,
    pub target_soc_pct: Option<f64>,
    /// Present power.
    pub power_kw: Option<f64>,
    /// Vehicle/charger-reported seconds to target; wins when present.
    pub remaining_s: Option<f64>,
    /// Learned energy per % SoC for this session, when known.
    pub kwh_per_pct: Option<f64>,
}

/// Seconds to the target SoC, or `None` when it cannot be estimated (SoC, target or a
/// positive power unknown and no reported remaining time).
pub fn eta_s(i: &EtaInput) -> Option<f64> {
    if let Some(r) = i.remaining_s.filter(|r| r.is_finite() && *r >= 0.0) {
        return Some(r);
    }
    let soc = i.soc_pct.filter(|s| s.is_finite())?.clamp(0.0, 100.0);
    let target = i
        .target_soc_pct
        .filter(|s| s.is_finite())?
        .clamp(0.0, 100.0);
    if soc >= target {
        return Some(0.0);
    }
    let power = i.power_kw.filter(|p| p.is_finite() && *p > 0.0)?;
    let kpp = i
        .kwh_per_pct
        .filter(|k| k.is_finite() && *k > 0.0)
        .unwrap_or(DEFAULT_KWH_PER_PCT);
    let hours = match i.kind {
        ChargerKind::Ac => kpp * (target - soc) / power,
        ChargerKind::Dc => {
            // The curve is scaled so that it passes through the observed power at the
            // present SoC: a car charging below its peak (cold pack, shared cabinet) keeps
            // the same shape at a lower level.
            let peak = power / dc_curve(soc);
            kpp * inverse_curve_integral(soc, target) / peak
        }
    };
    Some(hours * 3600.0)
}

/// Fraction of peak power the DC curve allows at `soc`.
pub fn dc_curve(soc: f64) -> f64 {
    let s = soc.clamp(0.0, 100.0);
    for w in DC_CURVE.windows(2) {
        let ((s0, f0), (s1, f1)) = (w[0], w[1]);
        if s <= s1 {
            return f0 + (f1 - f0) * (s - s0) / (s1 - s0);
        }
    }
    DC_CURVE[DC_CURVE.len() - 1].1
}

/// ∫ ds / curve(s) from `a` to `b` (in %·peak⁻¹), exact on each linear segment.
fn inverse_curve_integral(a: f64, b: f64) -> f64 {
    let mut total = 0.0;
    for w in DC_CURVE.windows(2) {
        let (lo, hi) = (a.max(w[0].0), b.min(w[1].0));
        if hi <= lo {
            continue;
        }
        let (f_lo, f_hi) = (dc_curve(lo), dc_curve(hi));
        total += if (f_hi - f_lo).abs() < 1e-12 {
            (hi - lo) / f_lo
        } else {
            // f linear in s: ∫ ds/f = Δs/Δf · ln(f_hi/f_lo)
            (hi - lo) / (f_hi - f_lo) * (f_hi / f_lo).ln()
        };
    }
    total
}

/// Learns the energy delivered per % SoC within one session from the energy counter
/// (session_kwh, meter or integrated power) against the SoC, measured from the first
/// point where both were known so the estimate sharpens as the session progresses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KwhPerPct {
    anchor: Option<(f64, f64)>,
    value: Option<f64>,
}

impl KwhPerPct {
    pub fn observe(&mut self, soc_pct: f64, energy_kwh: f64) {
        if !soc_pct.is_finite() || !energy_kwh.is_finite() {
            return;
        }
        let Some((s0, e0)) = self.anchor else {
            self.anchor = Some((soc_pct, energy_kwh));
            return;
        };
        if soc_pct < s0 || energy_kwh < e0 {
            // SoC or counter went backwards (a different car, a reset counter): start over.
            self.anchor = Some((soc_pct, energy_kwh));
            self.value = None;
            return;
        }
        let span = soc_pct - s0;
        if span >= MIN_LEARN_SPAN_PCT {
            let v = (energy_kwh - e0) / span;
            if (KWH_PER_PCT_RANGE.0..=KWH_PER_PCT_RANGE.1).contains(&v) {
                self.value = Some(v);
            }
        }
    }

    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dc(soc: f64, target: f64, power: f64, kpp: Option<f64>) -> EtaInput {
        EtaInput {
            kind: ChargerKind::Dc,
            soc_pct: Some(soc),
            target_soc_pct: Some(target),
            power_kw: Some(power),
            remaining_s: None,
            kwh_per_pct: kpp,
        }
    }

    #[test]
    fn curve_shape() {
        assert_eq!(dc_curve(10.0), 1.0);
        assert_eq!(dc_curve(55.0), 1.0);
        assert!((dc_curve(80.0) - 0.25).abs() < 1e-9);
        assert!(dc_curve(100.0) < dc_curve(90.0));
        assert!((dc_curve(67.5) - 0.625).abs() < 1e-9);
    }

    #[test]
    fn taycan_10_to_80_takes_18_to_23_minutes() {
        // Taycan gen 1: ~0.9 kWh delivered per %, ~250–270 kW peak.
        for peak in [250.0, 270.0] {
            let eta = eta_s(&dc(10.0, 80.0, peak, Some(0.9))).unwrap();
            let min = eta / 60.0;
            assert!((18.0..=23.0).contains(&min), "peak {peak}: {min} min");
        }
        // Unlearned default: same ballpark.
        let min = eta_s(&dc(10.0, 80.0, 260.0, None)).unwrap() / 60.0;
        assert!((16.0..=23.0).contains(&min), "{min} min");
    }

    #[test]
    fn taper_makes_dc_slower_than_linear() {
        let i = dc(50.0, 80.0, 250.0, Some(0.9));
        let linear = 0.9 * 30.0 / 250.0 * 3600.0;
        assert!(eta_s(&i).unwrap() > 1.5 * linear);
        let ac = EtaInput {
            kind: ChargerKind::Ac,
            ..i
        };
        assert!((eta_s(&ac).unwrap() - linear).abs() < 1e-6);
    }

    #[test]
    fn eta_decreases_monotonically_as_soc_rises() {
        // Power following the curve (a car charging as modelled) and constant power.
        for follow in [true, false] {
            let mut prev = f64::INFINITY;
            let mut soc = 5.0;
            while soc < 80.0 {
                let p = if follow { 260.0 * dc_curve(soc) } else { 100.0 };
                let eta = eta_s(&dc(soc, 80.0, p, Some(0.9))).unwrap();
                assert!(eta < prev, "soc {soc}: {eta} !< {prev}");
                prev = eta;
                soc += 0.5;
            }
            assert!(prev < 60.0);
        }
    }

    #[test]
    fn unknowns_give_none_unless_remaining_is_reported() {
        let mut i = dc(50.0, 80.0, 100.0, None);
        i.soc_pct = None;
        assert_eq!(eta_s(&i), None);
        let mut j = dc(50.0, 80.0, 100.0, None);
        j.target_soc_pct = None;
        assert_eq!(eta_s(&j), None);
        let mut k = dc(50.0, 80.0, 0.0, None);
        assert_eq!(eta_s(&k), None);
        k.power_kw = None;
        assert_eq!(eta_s(&k), None);
        i.remaining_s = Some(420.0);
        assert_eq!(eta_s(&i), Some(420.0));
        assert_eq!(eta_s(&dc(81.0, 80.0, 30.0, None)), Some(0.0));
    }

    #[test]
    fn learns_kwh_per_pct_and_resets_on_regression() {
        let mut l = KwhPerPct::default();
        l.observe(20.0, 0.0);
        l.observe(21.0, 0.9);
        assert_eq!(l.get(), None, "span too short to learn");
        l.observe(30.0, 9.0);
        assert!((l.get().unwrap() - 0.9).abs() < 1e-9);
        l.observe(40.0, 1000.0);
        assert!(
            (l.get().unwrap() - 0.9).abs() < 1e-9,
            "implausible value ignored"
        );
        l.observe(10.0, 1000.0);
        assert_eq!(l.get(), None);
    }
}
