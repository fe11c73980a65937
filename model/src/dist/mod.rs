//! Data-parallel training with PyTorch DDP's semantics: rank 0's trainables are broadcast at the
//! start (and at resume), every step's gradients are averaged across ranks in flat buckets
//! before clipping, the global batch is sharded by rank. The collectives run on PyTorch's own
//! distributed engine ([`ProcessGroup`]: c10d's Gloo on CPU, NCCL on CUDA); [`SingleRank`] is
//! the one-rank identity.
//!
//! Buckets are all-reduced after the backward pass, not overlapped with it (DDP's `Reducer`
//! overlaps): measured with `spatiallock bench dp`, the all-reduce of the tiny configs' buckets is
//! a small share of a step, and the backward pass would need per-parameter hooks tch lacks.

pub mod c10d;
pub mod env;

use tch::{Device, Tensor};

pub use c10d::{Backend, ProcessGroup};
pub use env::RankEnv;

use crate::error::ModelError;

/// DDP's default bucket size: 25 MiB.
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// How a training run joins a data-parallel group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataParallel {
    /// Where the group meets and this rank's place in it.
    pub env: RankEnv,
    /// How long the rendezvous and any collective may wait for the other ranks.
    pub timeout: std::time::Duration,
    /// Gradient bucket size in bytes ([`DEFAULT_BUCKET_BYTES`] is DDP's).
    pub bucket_bytes: usize,
}

/// Collective operations over the ranks of one training job. Every rank must make the same
/// calls in the same order with tensors of the same shapes and kinds.
pub trait Collective: Send {
    /// This process's rank, in `0..world_size`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Replaces `tensor` (dense, contiguous) by its sum over the ranks.
    fn all_reduce_sum(&mut self, tensor: &mut Tensor) -> Result<(), ModelError>;
    /// Copies `root`'s `tensor` into every rank's.
    fn broadcast(&mut self, tensor: &mut Tensor, root: usize) -> Result<(), ModelError>;
    /// Waits for every rank.
    fn barrier(&mut self) -> Result<(), ModelError>;
}

/// One rank: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleRank;

impl Collective for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _: &mut Tensor) -> Result<(), ModelError> {
        Ok(())
    }
    fn broadcast(&mut self, _: &mut Tensor, root: usize) -> Result<(), ModelError> {
        if root != 0 {
            return Err(ModelError::Input(format!("broadcast root {root} with one rank")));
        }
        Ok(())
    }
    fn barrier(&mut self) -> Result<(), ModelError> {
        Ok(())
    }
}

/// Runs `f` on flat buckets of `tensors` (at most `bucket_bytes` each, one kind and device per
/// bucket, in order) and copies each bucket's result back into its tensors.
fn in_buckets(
    tensors: &mut [Tensor],
    bucket_bytes: usize,
    mut f: impl FnMut(&mut Tensor) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let mut start = 0;
    while start < tensors.len() {
        let (kind, device) = (tensors[start].kind(), tensors[start].device());
        let mut end = start;
        let mut bytes = 0;
        while end < tensors.len()
            && tensors[end].kind() == kind
            && tensors[end].device() == device
            && (end == start || bytes + tensor_bytes(&tensors[end]) <= bucket_bytes)
        {
            bytes += tensor_bytes(&tensors[end]);
            end += 1;
        }
        let views: Vec<Tensor> = tensors[start..end].iter().map(|t| t.reshape([-1])).collect();
        let mut flat = Tensor::f_cat(&views, 0)?;
        f(&mut flat)?;
        let mut offset = 0;
        for t in &mut tensors[start..end] {
            let n = t.numel() as i64;
            let part = flat.f_narrow(0, offset, n)?.f_view_as(t)?;
            t.f_copy_(&part)?;
            offset += n;
        }
        start = end;
    }
    Ok(())
}

fn tensor_bytes(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

/// Replaces every parameter's gradient by its mean over the ranks, in flat buckets of at most
/// `bucket_bytes` (DDP's averaging). A parameter whose gradient is undefined on every rank stays
/// undefined (the optimiser skips it, as with one rank); one defined on some ranks only gets a
/// zero gradient on the others first, as the one-rank run over the whole batch would have one.
/// Returns the bytes this rank all-reduced: the sum of its gradient buckets' sizes (0 with one
/// rank; the small vector of which gradients are defined is not counted).
///
/// Errors: [`ModelError::Collective`] when a rank is gone or stalled; [`ModelError::Torch`].
pub fn average_gradients(
    c: &mut dyn Collective,
    params: &mut [Tensor],
    bucket_bytes: usize,
) -> Result<u64, ModelError> {
    let world = c.world_size();
    if world <= 1 {
        return Ok(0);
    }
    tch::no_grad(|| {
        let defined: Vec<f32> = params
            .iter()
            .map(|p| if p.grad().defined() { 1.0 } else { 0.0 })
            .collect();
        let mut counts = Tensor::from_slice(&defined);
        c.all_reduce_sum(&mut counts)?;
        let counts = Vec::<f32>::try_from(&counts)?;
        let mut grads = Vec::new();
        for (p, n) in params.iter_mut().zip(counts) {
            if n == 0.0 {
                continue;
            }
            let mut g = p.grad();
            if !g.defined() {
                g = p.f_zeros_like()?;
                c10d::set_grad(p, &mut g)?;
            }
            grads.push(g);
        }
        let mut sent = 0u64;
        in_buckets(&mut grads, bucket_bytes, |flat| {
            c.all_reduce_sum(flat)?;
            sent += tensor_bytes(flat) as u64;
            let _ = flat.f_div_scalar_(world as f64)?;
            Ok(())
        })?;
        Ok(sent)
    })
}

/// Copies rank `root`'s `tensors` into every rank's, in flat buckets (DDP's start-up broadcast
/// of parameters and buffers).
///
/// Errors: [`ModelError::Collective`], [`ModelError::Torch`].
pub fn broadcast_tensors(
    c: &mut dyn Collective,
    tensors: &mut [Tensor],
    root: usize,
    bucket_bytes: usize,
) -> Result<(), ModelError> {
    if c.world_size() <= 1 {
        return Ok(());
    }
    tch::no_grad(|| in_buckets(tensors, bucket_bytes, |flat| c.broadcast(flat, root)))
}

/// The mean of each of `values` over the ranks (in f64; the all-reduce runs on `device`, the
/// ranks' device: NCCL takes CUDA tensors only).
///
/// Errors: [`ModelError::Collective`], [`ModelError::Torch`].
pub fn mean_over_ranks(c: &mut dyn Collective, values: &[f64], device: Device) -> Result<Vec<f64>, ModelError> {
    if c.world_size() <= 1 {
        return Ok(values.to_vec());
    }
    let mut t = Tensor::from_slice(values).f_to_device(device)?;
    c.all_reduce_sum(&mut t)?;
    let sums = Vec::<f64>::try_from(&t.f_to_device(Device::Cpu)?)?;
    Ok(sums.into_iter().map(|s| s / c.world_size() as f64).collect())
}

/// Whether `flag` is true on any rank (every rank gets the same answer; the all-reduce runs on
/// `device`).
///
/// Errors: [`ModelError::Collective`], [`ModelError::Torch`].
pub fn any_rank(c: &mut dyn Collective, flag: bool, device: Device) -> Result<bool, ModelError> {
    if c.world_size() <= 1 {
        return Ok(flag);
    }
    let mut t = Tensor::from_slice(&[if flag { 1.0f32 } else { 0.0 }]).f_to_device(device)?;
    c.all_reduce_sum(&mut t)?;
    Ok(t.f_double_value(&[0])? > 0.0)
}

/// The indices into a global batch of `len` samples that `rank` of `world` trains on (a
/// strided shard, so the union over ranks is the whole batch).
pub fn shard(len: usize, rank: usize, world: usize) -> Vec<usize> {
    (0..len).filter(|i| i % world.max(1) == rank).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn shards_partition_the_batch() {
        let mut all: Vec<usize> = (0..3).flat_map(|r| shard(10, r, 3)).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(shard(10, 0, 1), (0..10).collect::<Vec<_>>());
        assert_eq!(shard(4, 1, 2), vec![1, 3]);
    }

    #[test]
    fn single_rank_is_the_identity() {
        let mut c = SingleRank;
        let mut t = Tensor::from_slice(&[1.0f32, 2.0]);
        c.all_reduce_sum(&mut t).unwrap();
        assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![1.0, 2.0]);
        assert!(c.broadcast(&mut t, 1).is_err());
        assert_eq!(mean_over_ranks(&mut c, &[3.0], Device::Cpu).unwrap(), vec![3.0]);
        assert!(any_rank(&mut c, true, Device::Cpu).unwrap());
    }

    /// A collective over one process that doubles sums (as two identical ranks would), to
    /// check the bucketing arithmetic without a second process.
    struct TwoIdentical;
    impl Collective for TwoIdentical {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_reduce_sum(&mut self, t: &mut Tensor) -> Result<(), ModelError> {
            let _ = t.f_mul_scalar_(2.0)?;
            Ok(())
        }
        fn broadcast(&mut self, _: &mut Tensor, _: usize) -> Result<(), ModelError> {
            Ok(())
        }
        fn barrier(&mut self) -> Result<(), ModelError> {
            Ok(())
        }
    }

    #[test]
    fn buckets_split_by_size_and_copy_back_in_place() {
        let mut tensors: Vec<Tensor> = (0..5)
            .map(|i| Tensor::arange(6 + i, (Kind::Float, tch::Device::Cpu)).view([-1, 1]))
            .collect();
        let before: Vec<Vec<f32>> = tensors
            .iter()
            .map(|t| Vec::<f32>::try_from(&t.reshape([-1])).unwrap())
            .collect();
        let mut sizes = Vec::new();
        // 8 floats per bucket: every tensor (6–10 floats) gets a bucket of its own.
        in_buckets(&mut tensors, 32, |flat| {
            sizes.push(flat.numel());
            let _ = flat.f_mul_scalar_(3.0)?;
            Ok(())
        })
        .unwrap();
        assert_eq!(sizes, vec![6, 7, 8, 9, 10]);
        for (t, b) in tensors.iter().zip(&before) {
            let now = Vec::<f32>::try_from(&t.reshape([-1])).unwrap();
            assert_eq!(now, b.iter().map(|v| v * 3.0).collect::<Vec<_>>());
        }
        let mut sizes = Vec::new();
        in_buckets(&mut tensors, 1 << 20, |flat| {
            sizes.push(flat.numel());
            Ok(())
        })
        .unwrap();
        assert_eq!(sizes, vec![40]);
    }

    #[test]
    fn averaging_keeps_the_mean_and_undefined_gradients() {
        let used = Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let unused = Tensor::ones([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        (&used * 4.0).sum(Kind::Float).backward();
        let mut params = vec![used.shallow_clone(), unused.shallow_clone()];
        let sent = average_gradients(&mut TwoIdentical, &mut params, DEFAULT_BUCKET_BYTES).unwrap();
        assert_eq!(Vec::<f32>::try_from(&used.grad()).unwrap(), vec![4.0; 3]);
        // One bucket of the defined gradient: 3 f32.
        assert_eq!(sent, 12);
        assert_eq!(
            average_gradients(&mut SingleRank, &mut params, DEFAULT_BUCKET_BYTES).unwrap(),
            0
        );
        assert!(!unused.grad().defined());
    }
}
