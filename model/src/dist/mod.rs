//! Data-parallel collectives. The training step calls them in DDP order — rank 0's trainables
//! are broadcast once, every step's gradients are averaged across ranks before clipping — so
//! a multi-rank backend (NCCL on GPUs, a TCP ring on CPUs) drops in without touching the loop.
//! Today only the single-rank collective exists.

use tch::Tensor;

use crate::error::ModelError;

/// Collective operations over the ranks of one training job.
pub trait Collective: Send {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Replaces each tensor by its mean over the ranks.
    fn all_reduce_mean(&mut self, tensors: &mut [Tensor]) -> Result<(), ModelError>;
    /// Copies `root`'s tensors to every rank.
    fn broadcast(&mut self, tensors: &mut [Tensor], root: usize) -> Result<(), ModelError>;
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
    fn all_reduce_mean(&mut self, _: &mut [Tensor]) -> Result<(), ModelError> {
        Ok(())
    }
    fn broadcast(&mut self, _: &mut [Tensor], root: usize) -> Result<(), ModelError> {
        if root != 0 {
            return Err(ModelError::Input(format!("broadcast root {root} with one rank")));
        }
        Ok(())
    }
    fn barrier(&mut self) -> Result<(), ModelError> {
        Ok(())
    }
}

/// The positions of a global batch that `rank` of `world` trains on (a strided shard, so
/// the union over ranks is the whole batch).
pub fn shard(positions: &[u64], rank: usize, world: usize) -> Vec<u64> {
    positions
        .iter()
        .enumerate()
        .filter(|(i, _)| i % world.max(1) == rank)
        .map(|(_, p)| *p)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_batch() {
        let batch: Vec<u64> = (10..20).collect();
        let mut all: Vec<u64> = (0..3).flat_map(|r| shard(&batch, r, 3)).collect();
        all.sort();
        assert_eq!(all, batch);
        assert_eq!(shard(&batch, 0, 1), batch);
    }

    #[test]
    fn single_rank_is_the_identity() {
        let mut c = SingleRank;
        let mut t = [Tensor::from_slice(&[1.0f32, 2.0])];
        c.all_reduce_mean(&mut t).unwrap();
        assert_eq!(Vec::<f32>::try_from(&t[0]).unwrap(), vec![1.0, 2.0]);
        assert!(c.broadcast(&mut t, 1).is_err());
    }
}
