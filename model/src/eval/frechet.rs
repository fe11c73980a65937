//! Fréchet distance between two Gaussians fitted to feature sets (FID when the features come
//! from the FID Inception), matching pytorch-fid:
//! `‖μ1−μ2‖² + tr Σ1 + tr Σ2 − 2·tr √(Σ1Σ2)`, all in f64.
//!
//! The trace of the matrix square root is the sum of the square roots of the eigenvalues of
//! Σ1Σ2, which equal those of the symmetric `Lᵀ Σ2 L` when `Σ1 = L Lᵀ` (Cholesky; Σ2 is tried if
//! Σ1 is singular), or of `√Σ1 · Σ2 · √Σ1` when both are singular (rank-deficient, N < d): a
//! symmetric eigenvalue problem instead of scipy's general `sqrtm`, with tiny negative
//! round-off clamped to 0.
//!
//! The distance of identical statistics is 0, but the trace of the square root is a sum of
//! square roots of eigenvalues that round-off leaves slightly positive where they are 0 (a
//! rank-deficient covariance has many), so the result can come out a hair below 0 (pytorch-fid
//! returns that as is, e.g. `-0.000073` for a folder against its own statistics). Within
//! [`ROUND_OFF_TOLERANCE`] of the trace terms it is reported as 0; below that it is an error.
//! Statistics are accumulated in f64 batch by batch (Chan et al.'s merge of means and
//! centred second moments), with covariance `ddof = 1` like `np.cov`.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

/// Errors of statistics files and shapes.
#[derive(Debug, thiserror::Error)]
pub enum FidError {
    /// A statistics file is unreadable or malformed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the array.
        message: String,
    },
    /// Shapes do not agree.
    #[error("{0}")]
    Shape(String),
    /// Statistics that no feature set can have (NaN, an asymmetric or indefinite covariance),
    /// or a distance that cannot be one.
    #[error("{0}")]
    Invalid(String),
    /// libtorch failed on the statistics.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Mean and covariance of a feature set.
#[derive(Debug)]
pub struct GaussianStats {
    /// `[d]`, f64.
    pub mu: Tensor,
    /// `[d, d]`, f64.
    pub sigma: Tensor,
    /// How many feature vectors (images) they come from, when known: [`StatsAccumulator::finish`]
    /// records it, and `.npz` files written here carry it as an extra array `n` (pytorch-fid
    /// reads only `mu` and `sigma`; its own files do not record it).
    pub count: Option<i64>,
}

/// The largest negative Fréchet distance taken for round-off of 0, relative to the trace terms
/// `tr Σ1 + tr Σ2` (at least 1): the square roots of the round-off eigenvalues left where a
/// `d`-dimensional covariance has rank below `d` add up to about `d·√(ε·λmax)` (ε the f64
/// epsilon), under 10⁻⁴ of the traces for any `d` ≤ 10⁴ and `λmax` ≤ the trace.
pub const ROUND_OFF_TOLERANCE: f64 = 1e-4;

/// Settles a computed Fréchet distance: a value within [`ROUND_OFF_TOLERANCE`] below 0 is
/// round-off of 0 and becomes 0; a value further below, or not finite, is no distance at all
/// and an error ([`FidError::Invalid`]). `trace_terms` is `tr Σ1 + tr Σ2`.
pub fn settle_round_off(distance: f64, trace_terms: f64) -> Result<f64, FidError> {
    let tolerance = ROUND_OFF_TOLERANCE * trace_terms.max(1.0);
    if !distance.is_finite() || distance < -tolerance {
        return Err(FidError::Invalid(format!(
            "the Fréchet distance came out as {distance}, below 0 by more than round-off ({tolerance:.1e}); \
             no pair of Gaussians has that distance, so the statistics or the computation are wrong"
        )));
    }
    // `<=` so that -0.0 becomes 0 too (it prints as "-0.0000").
    Ok(if distance <= 0.0 { 0.0 } else { distance })
}

/// A warning when a Fréchet distance (`name`: `FID`, `fd_detector`) rests on fewer samples than
/// its feature dimensions `dims`, `None` otherwise: the covariance estimated from `fewest`
/// samples is then singular (rank at most `fewest − 1`), and the distance is biased upward, the
/// more the fewer the samples (Chong & Forsyth, "Effectively Unbiased FID and Inception Score
/// and where to find them", CVPR 2020), so it compares only with values over the same numbers
/// of samples. `sides` says how many each side had, e.g. `4 real and 4 generated images`.
pub fn few_samples_warning(name: &str, sides: &str, fewest: i64, dims: i64) -> Option<String> {
    (fewest < dims).then(|| {
        format!(
            "{name} from {sides}, fewer than its {dims} feature dimensions: the covariance estimate is singular \
             (rank at most {}) and {name} is biased upward at this size, so it compares only with values over \
             the same numbers of images",
            (fewest - 1).max(0)
        )
    })
}

/// Streaming accumulation of feature statistics.
#[derive(Debug)]
pub struct StatsAccumulator {
    n: i64,
    mean: Tensor,
    m2: Tensor,
}

impl StatsAccumulator {
    /// For `d`-dimensional features.
    pub fn new(d: i64) -> Self {
        let opts = (Kind::Double, Device::Cpu);
        Self {
            n: 0,
            mean: Tensor::zeros([d], opts),
            m2: Tensor::zeros([d, d], opts),
        }
    }

    /// Adds a batch `[b, d]`.
    pub fn add(&mut self, batch: &Tensor) -> Result<(), FidError> {
        let s = batch.size();
        let d = self.mean.size()[0];
        if s.len() != 2 || s[1] != d {
            return Err(FidError::Shape(format!("features: expected [B, {d}], got {s:?}")));
        }
        let b = s[0];
        if b == 0 {
            return Ok(());
        }
        let x = batch.to_kind(Kind::Double).to_device(Device::Cpu);
        let mean_b = x.mean_dim(0, false, Kind::Double);
        let centred = &x - &mean_b;
        let m2_b = centred.transpose(0, 1).matmul(&centred);
        let n = self.n + b;
        let delta = &mean_b - &self.mean;
        let (na, nb, nn) = (self.n as f64, b as f64, n as f64);
        self.mean = &self.mean + &delta * (nb / nn);
        self.m2 = &self.m2 + m2_b + delta.outer(&delta) * (na * nb / nn);
        self.n = n;
        Ok(())
    }

    /// Samples seen.
    pub fn count(&self) -> i64 {
        self.n
    }

    /// μ and Σ (ddof 1). Needs at least 2 samples.
    pub fn finish(&self) -> Result<GaussianStats, FidError> {
        if self.n < 2 {
            return Err(FidError::Shape(format!(
                "need at least 2 feature vectors for a covariance, got {}",
                self.n
            )));
        }
        Ok(GaussianStats {
            mu: self.mean.shallow_clone(),
            sigma: &self.m2 / (self.n - 1) as f64,
            count: Some(self.n),
        })
    }
}

impl GaussianStats {
    /// Reads pytorch-fid's `.npz` (`mu` `[d]`, `sigma` `[d, d]`, and the sample count `n` when
    /// the file was written here).
    pub fn read_npz(path: &Path) -> Result<Self, FidError> {
        let bad = |message: String| FidError::File {
            path: path.to_path_buf(),
            message,
        };
        // tch's npz reader can panic on a damaged archive; turn that into an error.
        let read = std::panic::catch_unwind(|| Tensor::read_npz(path))
            .map_err(|_| bad("not a readable .npz archive".into()))?
            .map_err(|e| bad(format!("not a readable .npz archive: {e}")))?;
        let get = |name: &str| {
            read.iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.to_kind(Kind::Double))
                .ok_or_else(|| {
                    bad(format!(
                        "no array `{name}` (pytorch-fid statistics have `mu` and `sigma`)"
                    ))
                })
        };
        let (mu, sigma) = (get("mu")?, get("sigma")?);
        let count = match read.iter().find(|(n, _)| n == "n") {
            None => None,
            Some((_, n)) if n.numel() == 1 => {
                let count = n
                    .f_to_kind(Kind::Int64)
                    .and_then(|n| n.f_view([1]))
                    .and_then(|n| n.f_int64_value(&[0]))
                    .map_err(|e| bad(format!("`n` is not a count: {e}")))?;
                if count < 2 {
                    return Err(bad(format!(
                        "`n` is {count}: statistics need at least 2 images (a covariance from fewer is undefined)"
                    )));
                }
                Some(count)
            }
            Some((_, n)) => return Err(bad(format!("`n` must hold one count, has shape {:?}", n.size()))),
        };
        let stats = Self { mu, sigma, count };
        stats.check().map_err(bad)?;
        Ok(stats)
    }

    /// Checks what a mean and a covariance must be: a 1-D finite `mu`; a finite, symmetric,
    /// positive semi-definite `[d, d]` `sigma`, within the round-off of a covariance stored in
    /// f32 (d · 2⁻²³ of its largest entry, enough for a rank-deficient 2048-d Inception
    /// covariance). Returns what is wrong, naming the array.
    pub fn check(&self) -> Result<(), String> {
        let d = match self.mu.size().as_slice() {
            [d] => *d,
            other => return Err(format!("`mu` must be 1-D, has shape {other:?}")),
        };
        if self.sigma.size() != [d, d] {
            return Err(format!(
                "`sigma` must be [{d}, {d}] to match `mu`, has shape {:?}",
                self.sigma.size()
            ));
        }
        let scalar = |t: Result<Tensor, tch::TchError>| -> Result<f64, String> {
            t.and_then(|t| t.f_double_value(&[])).map_err(|e| e.to_string())
        };
        let non_finite = |t: &Tensor| -> Result<i64, String> {
            t.f_isfinite()
                .and_then(|f| f.f_logical_not())
                .and_then(|f| f.f_sum(Kind::Int64))
                .and_then(|n| n.f_int64_value(&[]))
                .map_err(|e| e.to_string())
        };
        for (name, t) in [("mu", &self.mu), ("sigma", &self.sigma)] {
            let n = non_finite(t)?;
            if n > 0 {
                return Err(format!(
                    "`{name}` holds {n} NaN or infinite value(s); statistics must be finite"
                ));
            }
        }
        if d == 0 {
            return Ok(());
        }
        let scale = scalar(self.sigma.f_abs().and_then(|a| a.f_max()))?.max(f64::MIN_POSITIVE);
        let tolerance = d as f64 * f64::from(f32::EPSILON) * scale;
        let asymmetry = scalar(
            self.sigma
                .f_sub(&self.sigma.transpose(0, 1))
                .and_then(|x| x.f_abs())
                .and_then(|x| x.f_max()),
        )?;
        if asymmetry > tolerance {
            return Err(format!(
                "`sigma` is not symmetric (largest |Σ − Σᵀ| = {asymmetry:.3e}); a covariance is symmetric"
            ));
        }
        // Positive semi-definite: Σ + εI has a Cholesky factor exactly when no eigenvalue of Σ
        // is below −ε.
        let jittered = &self.sigma + Tensor::eye(d, (Kind::Double, self.sigma.device())) * tolerance;
        let (_, info) = jittered.f_linalg_cholesky_ex(false, false).map_err(|e| e.to_string())?;
        if info.f_int64_value(&[]).map_err(|e| e.to_string())? != 0 {
            return Err("`sigma` has negative eigenvalues; a covariance is positive semi-definite".into());
        }
        Ok(())
    }

    /// Writes pytorch-fid's `.npz`, with the sample count as `n` when known (pytorch-fid ignores
    /// it).
    pub fn write_npz(&self, path: &Path) -> Result<(), FidError> {
        let n = self.count.map(|n| Tensor::from_slice(&[n]));
        let mut arrays: Vec<(&str, &Tensor)> = vec![("mu", &self.mu), ("sigma", &self.sigma)];
        if let Some(n) = &n {
            arrays.push(("n", n));
        }
        Tensor::write_npz(&arrays, path).map_err(|e| FidError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Feature dimension.
    pub fn dim(&self) -> i64 {
        self.mu.size()[0]
    }
}

/// Symmetric square root of a PSD matrix (negative round-off eigenvalues clamped to 0).
fn psd_sqrt(m: &Tensor) -> Result<Tensor, FidError> {
    let (e, v) = m.f_linalg_eigh("L")?;
    Ok((&v * e.clamp_min(0.0).sqrt().unsqueeze(0)).matmul(&v.transpose(0, 1)))
}

/// The Fréchet distance between two Gaussians (pytorch-fid's `calculate_frechet_distance`), with
/// round-off below 0 settled to 0 ([`settle_round_off`]).
///
/// Errors: [`FidError::Shape`] for different dimensions; [`FidError::Invalid`] for statistics
/// that fail [`GaussianStats::check`] or a result that is not a distance (NaN, or negative
/// beyond round-off); [`FidError::Torch`] when an eigen-decomposition fails.
pub fn frechet_distance(a: &GaussianStats, b: &GaussianStats) -> Result<f64, FidError> {
    if a.dim() != b.dim() {
        return Err(FidError::Shape(format!(
            "statistics of dimension {} and {} cannot be compared",
            a.dim(),
            b.dim()
        )));
    }
    for (which, s) in [("first", a), ("second", b)] {
        s.check()
            .map_err(|m| FidError::Invalid(format!("the {which} statistics: {m}")))?;
    }
    let diff = &a.mu - &b.mu;
    let s1 = (&a.sigma + a.sigma.transpose(0, 1)) * 0.5;
    let s2 = (&b.sigma + b.sigma.transpose(0, 1)) * 0.5;
    let congruence = |factor: &Tensor, other: &Tensor| factor.transpose(0, 1).matmul(&other.matmul(factor));
    let cholesky = |m: &Tensor| -> Result<Option<Tensor>, FidError> {
        let (l, info) = m.f_linalg_cholesky_ex(false, false)?;
        Ok((info.int64_value(&[]) == 0).then_some(l))
    };
    let m = match (cholesky(&s1)?, cholesky(&s2)?) {
        (Some(l), _) => congruence(&l, &s2),
        (None, Some(l)) => congruence(&l, &s1),
        (None, None) => {
            let root = psd_sqrt(&s1)?;
            root.matmul(&s2).matmul(&root)
        }
    };
    let m = (&m + m.transpose(0, 1)) * 0.5;
    let tr_covmean = m
        .f_linalg_eigvalsh("L")?
        .clamp_min(0.0)
        .sqrt()
        .sum(Kind::Double)
        .double_value(&[]);
    let d2 = diff.dot(&diff).double_value(&[]);
    let tr = a.sigma.trace().double_value(&[]) + b.sigma.trace().double_value(&[]);
    settle_round_off(d2 + tr - 2.0 * tr_covmean, tr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_statistics_equal_one_batch() {
        let x = Tensor::randn([50, 6], (Kind::Double, Device::Cpu));
        let mut whole = StatsAccumulator::new(6);
        whole.add(&x).unwrap();
        let mut parts = StatsAccumulator::new(6);
        for chunk in x.split(7, 0) {
            parts.add(&chunk).unwrap();
        }
        let (a, b) = (whole.finish().unwrap(), parts.finish().unwrap());
        assert!(a.sigma.allclose(&b.sigma, 1e-12, 1e-12, false));
        assert!(a.mu.allclose(&b.mu, 1e-12, 1e-12, false));
        assert!(parts.add(&Tensor::zeros([2, 5], (Kind::Double, Device::Cpu))).is_err());
    }

    fn stats(mu: Vec<f64>, sigma: Vec<f64>) -> GaussianStats {
        let d = mu.len() as i64;
        GaussianStats {
            mu: Tensor::from_slice(&mu),
            sigma: Tensor::from_slice(&sigma).view([d, d]),
            count: None,
        }
    }

    fn identity(d: usize) -> Vec<f64> {
        (0..d * d).map(|i| if i % (d + 1) == 0 { 1.0 } else { 0.0 }).collect()
    }

    #[test]
    fn statistics_that_no_feature_set_has_are_refused() {
        let good = stats(vec![0.0; 3], identity(3));
        assert_eq!(good.check(), Ok(()));
        // The report that crashed other FID tools: NaN off the diagonal.
        let mut nan = identity(3);
        nan[1] = f64::NAN;
        nan[3] = f64::NAN;
        let err = stats(vec![0.0; 3], nan).check().unwrap_err();
        assert!(err.contains("`sigma` holds 2 NaN"), "{err}");
        let err = stats(vec![f64::INFINITY, 0.0, 0.0], identity(3)).check().unwrap_err();
        assert!(err.contains("`mu`"), "{err}");
        let mut asym = identity(3);
        asym[1] = 0.5;
        assert!(stats(vec![0.0; 3], asym).check().unwrap_err().contains("not symmetric"));
        let mut indefinite = identity(3);
        indefinite[4] = -1.0;
        assert!(stats(vec![0.0; 3], indefinite)
            .check()
            .unwrap_err()
            .contains("negative eigenvalues"));
        // A rank-deficient covariance (fewer samples than dimensions) is fine, also after
        // rounding to f32 as pytorch-fid's files are often stored.
        assert_eq!(stats(vec![0.0; 2], vec![1.0, 1.0, 1.0, 1.0]).check(), Ok(()));
        let x = Tensor::randn([20, 256], (Kind::Double, Device::Cpu));
        let mut acc = StatsAccumulator::new(256);
        acc.add(&x).unwrap();
        let s = acc.finish().unwrap();
        let rounded = GaussianStats {
            mu: s.mu.to_kind(Kind::Float).to_kind(Kind::Double),
            sigma: s.sigma.to_kind(Kind::Float).to_kind(Kind::Double),
            count: s.count,
        };
        assert_eq!(rounded.check(), Ok(()));
        let wrong_shape = GaussianStats {
            mu: Tensor::zeros([3], (Kind::Double, Device::Cpu)),
            sigma: Tensor::zeros([2, 2], (Kind::Double, Device::Cpu)),
            count: None,
        };
        assert!(wrong_shape.check().unwrap_err().contains("[3, 3]"));
        // And the distance refuses them too, naming which side is wrong.
        let mut nan = identity(3);
        nan[1] = f64::NAN;
        nan[3] = f64::NAN;
        let err = frechet_distance(&good, &stats(vec![0.0; 3], nan)).unwrap_err();
        assert!(err.to_string().starts_with("the second statistics"), "{err}");
    }

    #[test]
    fn identical_gaussians_are_at_distance_zero() {
        let x = Tensor::randn([40, 5], (Kind::Double, Device::Cpu));
        let mut acc = StatsAccumulator::new(5);
        acc.add(&x).unwrap();
        let s = acc.finish().unwrap();
        assert_eq!(s.count, Some(40));
        assert!(frechet_distance(&s, &s).unwrap().abs() < 1e-9);
        // Rank-deficient (4 samples in 64 dimensions), where round-off pushes below 0: never
        // negative.
        let x = Tensor::randn([4, 64], (Kind::Double, Device::Cpu));
        let mut acc = StatsAccumulator::new(64);
        acc.add(&x).unwrap();
        let s = acc.finish().unwrap();
        let d = frechet_distance(&s, &s).unwrap();
        assert!((0.0..1e-3).contains(&d), "{d}");
    }

    #[test]
    fn round_off_below_zero_settles_to_zero_and_more_is_an_error() {
        // `fid score a a` on 3 images gave -0.000073 with traces of about a hundred.
        assert_eq!(settle_round_off(-7.3e-5, 120.0).unwrap(), 0.0);
        assert_eq!(settle_round_off(12.5, 120.0).unwrap(), 12.5);
        // The tolerance is relative to the traces, at least 1e-4 in absolute terms.
        assert_eq!(settle_round_off(-0.9e-4, 0.01).unwrap(), 0.0);
        let err = settle_round_off(-0.5, 120.0).unwrap_err().to_string();
        assert!(
            err.contains("-0.5") && err.contains("below 0 by more than round-off"),
            "{err}"
        );
        assert!(settle_round_off(f64::NAN, 1.0).is_err());
        // A settled zero prints as 0, not -0.
        assert_eq!(format!("{:.4}", settle_round_off(-1e-9, 1.0).unwrap()), "0.0000");
    }

    #[test]
    fn few_samples_are_warned_about_naming_the_count() {
        let w = few_samples_warning("FID", "4 and 4 images", 4, 2048).expect("a warning");
        assert!(
            w.starts_with("FID from 4 and 4 images, fewer than its 2048 feature dimensions"),
            "{w}"
        );
        assert!(w.contains("rank at most 3") && w.contains("biased upward"), "{w}");
        assert_eq!(few_samples_warning("FID", "2048 and 5000 images", 2048, 2048), None);
    }

    #[test]
    fn npz_files_written_here_record_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let x = Tensor::randn([6, 3], (Kind::Double, Device::Cpu));
        let mut acc = StatsAccumulator::new(3);
        acc.add(&x).unwrap();
        let s = acc.finish().unwrap();
        let path = dir.join("stats.npz");
        s.write_npz(&path).unwrap();
        assert_eq!(GaussianStats::read_npz(&path).unwrap().count, Some(6));
        // pytorch-fid's files have only mu and sigma.
        let plain = dir.join("plain.npz");
        Tensor::write_npz(&[("mu", &s.mu), ("sigma", &s.sigma)], &plain).unwrap();
        assert_eq!(GaussianStats::read_npz(&plain).unwrap().count, None);
    }
}
