//! [`RankEnv`]: where a rank process finds its group, from the variables torchrun sets
//! (`MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`), so the
//! same binary runs under torchrun-style launchers, Slurm and Kubernetes indexed jobs.

use crate::error::ModelError;

/// One rank's place in a data-parallel group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankEnv {
    /// Host of rank 0's rendezvous store (`MASTER_ADDR`).
    pub master_addr: String,
    /// Its TCP port (`MASTER_PORT`).
    pub master_port: u16,
    /// This process's rank in `0..world_size` (`RANK`).
    pub rank: usize,
    /// Ranks in the group (`WORLD_SIZE`).
    pub world_size: usize,
    /// Rank among the processes on this machine, which picks the device (`LOCAL_RANK`).
    pub local_rank: usize,
    /// Processes on this machine (`LOCAL_WORLD_SIZE`).
    pub local_world_size: usize,
}

impl RankEnv {
    /// Reads the torchrun variables through `var`; `None` when `WORLD_SIZE` is unset (not
    /// launched as a group). `LOCAL_RANK` defaults to `RANK` and `LOCAL_WORLD_SIZE` to
    /// `WORLD_SIZE` (one machine).
    ///
    /// Errors: [`ModelError::Input`] naming the variable that is missing or not a number, or a
    /// rank outside the world.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, ModelError> {
        let Some(world) = var("WORLD_SIZE") else {
            return Ok(None);
        };
        let number = |name: &str, text: Option<String>| -> Result<usize, ModelError> {
            let text = text.ok_or_else(|| {
                ModelError::Input(format!("WORLD_SIZE is set but {name} is not (torchrun sets both)"))
            })?;
            text.trim()
                .parse()
                .map_err(|_| ModelError::Input(format!("{name}={text:?} is not a non-negative integer")))
        };
        let world_size = number("WORLD_SIZE", Some(world))?;
        let rank = number("RANK", var("RANK"))?;
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => number("LOCAL_RANK", Some(v))?,
            None => rank,
        };
        let local_world_size = match var("LOCAL_WORLD_SIZE") {
            Some(v) => number("LOCAL_WORLD_SIZE", Some(v))?,
            None => world_size,
        };
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = number("MASTER_PORT", var("MASTER_PORT"))?;
        let master_port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| ModelError::Input(format!("MASTER_PORT={port} is not a TCP port (1–65535)")))?;
        if world_size == 0 || rank >= world_size {
            return Err(ModelError::Input(format!(
                "RANK={rank} with WORLD_SIZE={world_size}: the rank must be below the world size"
            )));
        }
        if local_world_size == 0 || local_rank >= local_world_size {
            return Err(ModelError::Input(format!(
                "LOCAL_RANK={local_rank} with LOCAL_WORLD_SIZE={local_world_size}: the local rank must be below it"
            )));
        }
        Ok(Some(Self {
            master_addr,
            master_port,
            rank,
            world_size,
            local_rank,
            local_world_size,
        }))
    }

    /// [`RankEnv::from_vars`] over this process's environment.
    pub fn from_process() -> Result<Option<Self>, ModelError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// The variables that describe this rank, for a child process.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
            ("RANK", self.rank.to_string()),
            ("WORLD_SIZE", self.world_size.to_string()),
            ("LOCAL_RANK", self.local_rank.to_string()),
            ("LOCAL_WORLD_SIZE", self.local_world_size.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<RankEnv>, ModelError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        RankEnv::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn reads_torchrun_variables_and_names_bad_ones() {
        assert_eq!(env(&[]).unwrap(), None);
        let e = env(&[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_PORT", "29500")])
            .unwrap()
            .unwrap();
        assert_eq!((e.rank, e.local_rank, e.local_world_size), (1, 1, 2));
        assert_eq!(e.master_addr, "127.0.0.1");
        let back: HashMap<_, _> = e.vars().into_iter().collect();
        assert_eq!(back["LOCAL_WORLD_SIZE"], "2");
        for (pairs, named) in [
            (vec![("WORLD_SIZE", "2"), ("MASTER_PORT", "1")], "RANK"),
            (
                vec![("WORLD_SIZE", "two"), ("RANK", "0"), ("MASTER_PORT", "1")],
                "WORLD_SIZE",
            ),
            (vec![("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")], "RANK=2"),
            (
                vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "70000")],
                "MASTER_PORT",
            ),
            (vec![("WORLD_SIZE", "2"), ("RANK", "0")], "MASTER_PORT"),
        ] {
            let err = env(&pairs).unwrap_err().to_string();
            assert!(err.contains(named), "{err} should name {named}");
        }
    }
}
