//! Where this process sits in a distributed run: its rank, the world size and its local rank,
//! read from the environment that the usual launchers set — `torchrun` / `torch.distributed`,
//! Slurm's `srun`, Open MPI's and MPICH's `mpirun` — or given explicitly. Pure functions over
//! a map of variables, so every rule is testable without a launcher; [`detect`] reads the
//! process's own environment. Nothing here talks to other ranks: there is no coordinator.
//!
//! Rules:
//! - Explicit `rank` and `world_size` win over the environment (the environment then only
//!   supplies the local rank, when it can).
//! - Launchers are tried innermost first — torchrun, Open MPI, MPICH/PMI, Slurm — because they
//!   nest that way (`srun … torchrun …`, `mpirun` inside an `sbatch` script): the inner
//!   launcher's variables describe this process, the outer one's describe its parent. The first
//!   launcher with any of its variables set is the one used; the outer ones are reported as
//!   [`Placement::outer`].
//! - That launcher's rank and world-size variables must both be set ([`LauncherError::Incomplete`]
//!   names what is set and what is missing), be non-negative integers
//!   ([`LauncherError::Variable`]) and agree (rank and local rank below the world size; Open MPI
//!   and MPICH, which run at the same level, must not disagree): otherwise
//!   [`LauncherError::Contradiction`] names the variables and their values.
//! - No launcher at all is [`LauncherError::NotDetected`], listing the variables looked for.
//!
//! With CUDA the device is the local rank, counted within `CUDA_VISIBLE_DEVICES` when it is set
//! (see [`cuda_ordinal`]).
//!
//! From Rust, a rank's shard is a loader option; [`detect`] reads the process's environment,
//! [`resolve`] any map of variables:
//!
//! ```
//! use std::collections::BTreeMap;
//! use arraydrain::{launcher, Loader, Strategy, Table};
//! use ndarray::Array1;
//!
//! // What `torchrun --nproc_per_node=3` gives its third process.
//! let env: BTreeMap<String, String> = [("RANK", "2"), ("WORLD_SIZE", "3"), ("LOCAL_RANK", "2")]
//!     .into_iter()
//!     .map(|(k, v)| (k.to_string(), v.to_string()))
//!     .collect();
//! let place = launcher::resolve(None, None, &env)?;
//! assert_eq!((place.rank, place.world_size, place.local_rank), (2, 3, Some(2)));
//!
//! let y = Array1::from_iter(0..10i64);
//! let table = Table::builder().view("y", y.view()).build()?;
//! let out = Loader::new(&table)
//!     .batch_size(2)
//!     .shard(place.rank, place.world_size) // DistributedSampler(num_replicas=3, rank=2)
//!     .materialize(Strategy::Auto)?;
//! assert_eq!(out.view::<i64>("y")?.as_slice(), Some(&[2i64, 5, 8, 1][..]));
//! # Ok::<(), arraydrain::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};

/// Why a launcher's variables (or the explicit `--rank` / `--world-size`) cannot place this
/// process in a distributed run; wrapped by [`Error::Launcher`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LauncherError {
    /// `--distributed` found no launcher's variables in the environment.
    #[error(
        "no launcher detected: none of {} is set; run under torchrun, srun or mpirun, or pass \
         --rank and --world-size",
        looked_for.join("; ")
    )]
    NotDetected {
        /// The variables looked for, one entry per launcher.
        looked_for: Vec<String>,
    },
    /// A launcher's rank or world-size variable is missing while others of its set are there.
    #[error("{launcher}: {} set but {} missing", set.join(", "), missing.join(", "))]
    Incomplete {
        /// The launcher (`torchrun`, `slurm`, `openmpi`, `mpich`, or `explicit` for the flags).
        launcher: &'static str,
        /// The variables (or flags) that are set.
        set: Vec<String>,
        /// The ones that are missing.
        missing: Vec<String>,
    },
    /// A launcher variable does not hold what it should.
    #[error("{name}={value:?}: {reason}")]
    Variable {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Launcher variables contradict each other.
    #[error("{launcher}: {} — {reason}", variables.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(", "))]
    Contradiction {
        /// The launcher (`torchrun`, `slurm`, `openmpi`, `mpich`, `mpi` for Open MPI against
        /// MPICH, `cuda` for the device).
        launcher: &'static str,
        /// The variables concerned, with their values.
        variables: Vec<(String, String)>,
        /// How they contradict each other.
        reason: String,
    },
}

/// The launchers whose environment is understood, innermost first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// `torchrun` / `torch.distributed.run` (and any `env://` launch): `RANK`, `WORLD_SIZE`,
    /// `LOCAL_RANK`.
    Torchrun,
    /// Open MPI's `mpirun`: `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`,
    /// `OMPI_COMM_WORLD_LOCAL_RANK`.
    OpenMpi,
    /// MPICH / Intel MPI (Hydra, PMI): `PMI_RANK`, `PMI_SIZE`, `MPI_LOCALRANKID`.
    Mpich,
    /// Slurm's `srun`: `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`.
    Slurm,
}

impl Launcher {
    /// Every launcher, in the order they are tried (innermost first).
    pub const ALL: [Launcher; 4] = [
        Launcher::Torchrun,
        Launcher::OpenMpi,
        Launcher::Mpich,
        Launcher::Slurm,
    ];

    /// A short name (`torchrun`, `openmpi`, `mpich`, `slurm`).
    pub fn name(self) -> &'static str {
        match self {
            Launcher::Torchrun => "torchrun",
            Launcher::OpenMpi => "openmpi",
            Launcher::Mpich => "mpich",
            Launcher::Slurm => "slurm",
        }
    }

    /// The variables holding the rank, the world size and the local rank.
    pub fn variables(self) -> [&'static str; 3] {
        match self {
            Launcher::Torchrun => ["RANK", "WORLD_SIZE", "LOCAL_RANK"],
            Launcher::OpenMpi => [
                "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_SIZE",
                "OMPI_COMM_WORLD_LOCAL_RANK",
            ],
            Launcher::Mpich => ["PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"],
            Launcher::Slurm => ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"],
        }
    }
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a placement came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Given explicitly (`--rank` / `--world-size`).
    Explicit,
    /// Read from a launcher's variables.
    Launcher(Launcher),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Explicit => f.write_str("explicit"),
            Source::Launcher(l) => write!(f, "{l}"),
        }
    }
}

/// One launcher's reading of the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The launcher.
    pub launcher: Launcher,
    /// Its rank.
    pub rank: usize,
    /// Its world size.
    pub world_size: usize,
    /// Its local rank, when its variable is set.
    pub local_rank: Option<usize>,
}

/// This process's place in a distributed run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// The rank among the processes of this machine, when known (it picks the CUDA device).
    pub local_rank: Option<usize>,
    /// Where rank and world size came from.
    pub source: Source,
    /// Outer launchers whose variables are also set (e.g. Slurm around torchrun); not used.
    pub outer: Vec<Reading>,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rank {} of {}, local rank {}, from {}",
            self.rank,
            self.world_size,
            self.local_rank
                .map_or_else(|| "unknown".to_string(), |l| l.to_string()),
            self.source
        )?;
        for o in &self.outer {
            write!(
                f,
                "; {} also set (rank {} of {}, outer launcher, not used)",
                o.launcher, o.rank, o.world_size
            )?;
        }
        Ok(())
    }
}

/// The process environment as a map (only the variables the launchers use, plus
/// `CUDA_VISIBLE_DEVICES`; values that are not UTF-8 are kept lossily).
pub fn process_env() -> BTreeMap<String, String> {
    let wanted: Vec<&str> = Launcher::ALL
        .iter()
        .flat_map(|l| l.variables())
        .chain(["CUDA_VISIBLE_DEVICES"])
        .collect();
    std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.to_string_lossy().into_owned();
            wanted
                .contains(&k.as_str())
                .then(|| (k, v.to_string_lossy().into_owned()))
        })
        .collect()
}

/// [`resolve`] over this process's environment.
///
/// # Errors
/// As [`resolve`].
pub fn detect(rank: Option<usize>, world_size: Option<usize>) -> Result<Placement> {
    resolve(rank, world_size, &process_env())
}

/// This process's placement: explicit `rank` and `world_size` when both are given, else the
/// innermost launcher found in `env` (see the module docs for the rules).
///
/// # Errors
/// [`LauncherError::NotDetected`], [`LauncherError::Incomplete`], [`LauncherError::Variable`],
/// [`LauncherError::Contradiction`]; with explicit values, [`Error::ZeroWorldSize`] and
/// [`Error::RankOutOfRange`]; only one of `rank` / `world_size` given is
/// [`LauncherError::Incomplete`] too.
pub fn resolve(
    rank: Option<usize>,
    world_size: Option<usize>,
    env: &BTreeMap<String, String>,
) -> Result<Placement> {
    match (rank, world_size) {
        (Some(rank), Some(world_size)) => {
            crate::sampler::Shard::new(rank, world_size)?;
            // The environment may still say which device is ours; a broken one is ignored,
            // since the explicit values win.
            let local_rank = from_env(env)
                .ok()
                .filter(|p| p.rank == rank && p.world_size == world_size)
                .and_then(|p| p.local_rank);
            Ok(Placement {
                rank,
                world_size,
                local_rank,
                source: Source::Explicit,
                outer: Vec::new(),
            })
        }
        (None, None) => from_env(env),
        (r, _) => Err(Error::Launcher(LauncherError::Incomplete {
            launcher: "explicit",
            set: vec![if r.is_some() {
                "--rank"
            } else {
                "--world-size"
            }
            .to_string()],
            missing: vec![if r.is_some() {
                "--world-size"
            } else {
                "--rank"
            }
            .to_string()],
        })),
    }
}

fn from_env(env: &BTreeMap<String, String>) -> Result<Placement> {
    let mut readings: Vec<Reading> = Vec::new();
    let mut chosen: Option<Reading> = None;
    for launcher in Launcher::ALL {
        let Some(r) = read(launcher, env, chosen.is_none())? else {
            continue;
        };
        match chosen {
            None => chosen = Some(r),
            Some(c) => {
                check_peers(c, r)?;
                readings.push(r);
            }
        }
    }
    let Some(c) = chosen else {
        return Err(Error::Launcher(LauncherError::NotDetected {
            looked_for: Launcher::ALL
                .iter()
                .map(|l| format!("{} ({})", l.variables().join(", "), l.name()))
                .collect(),
        }));
    };
    Ok(Placement {
        rank: c.rank,
        world_size: c.world_size,
        local_rank: c.local_rank,
        source: Source::Launcher(c.launcher),
        outer: readings,
    })
}

/// Open MPI and MPICH run at the same level: when both are set they must agree.
fn check_peers(chosen: Reading, other: Reading) -> Result<()> {
    let peers = [Launcher::OpenMpi, Launcher::Mpich];
    if peers.contains(&chosen.launcher)
        && peers.contains(&other.launcher)
        && (chosen.rank, chosen.world_size) != (other.rank, other.world_size)
    {
        let [cr, cw, _] = chosen.launcher.variables();
        let [or, ow, _] = other.launcher.variables();
        return Err(Error::Launcher(LauncherError::Contradiction {
            launcher: "mpi",
            variables: vec![
                (cr.into(), chosen.rank.to_string()),
                (cw.into(), chosen.world_size.to_string()),
                (or.into(), other.rank.to_string()),
                (ow.into(), other.world_size.to_string()),
            ],
            reason: "Open MPI's and MPICH's variables describe different processes".into(),
        }));
    }
    Ok(())
}

/// One launcher's variables: `None` when none is set. With `strict`, a partial or bad set is an
/// error; otherwise (an outer launcher) it is ignored.
fn read(
    launcher: Launcher,
    env: &BTreeMap<String, String>,
    strict: bool,
) -> Result<Option<Reading>> {
    let names = launcher.variables();
    let values: Vec<Option<&str>> = names
        .iter()
        .map(|n| env.get(*n).map(|v| v.trim()))
        .collect();
    if values.iter().all(Option::is_none) {
        return Ok(None);
    }
    let result = (|| {
        if values[0].is_none() || values[1].is_none() {
            return Err(Error::Launcher(LauncherError::Incomplete {
                launcher: launcher.name(),
                set: names
                    .iter()
                    .zip(&values)
                    .filter(|(_, v)| v.is_some())
                    .map(|(n, _)| n.to_string())
                    .collect(),
                missing: names[..2]
                    .iter()
                    .zip(&values)
                    .filter(|(_, v)| v.is_none())
                    .map(|(n, _)| n.to_string())
                    .collect(),
            }));
        }
        let parse = |i: usize| -> Result<Option<usize>> {
            values[i]
                .map(|v| {
                    v.parse::<usize>().map_err(|_| {
                        Error::Launcher(LauncherError::Variable {
                            name: names[i].to_string(),
                            value: v.to_string(),
                            reason: "not a non-negative integer".into(),
                        })
                    })
                })
                .transpose()
        };
        let (rank, world_size, local_rank) = (parse(0)?, parse(1)?, parse(2)?);
        let (rank, world_size) = (rank.unwrap_or(0), world_size.unwrap_or(0));
        let values = |with_local: bool| {
            let mut v = vec![
                (names[0].to_string(), rank.to_string()),
                (names[1].to_string(), world_size.to_string()),
            ];
            if let (true, Some(l)) = (with_local, local_rank) {
                v.push((names[2].to_string(), l.to_string()));
            }
            v
        };
        if world_size == 0 {
            return Err(Error::Launcher(LauncherError::Contradiction {
                launcher: launcher.name(),
                variables: values(false),
                reason: "the world size is 0".into(),
            }));
        }
        if world_size > crate::sampler::MAX_WORLD_SIZE {
            return Err(Error::Launcher(LauncherError::Variable {
                name: names[1].to_string(),
                value: world_size.to_string(),
                reason: format!(
                    "more ranks than a run may have (at most {})",
                    crate::sampler::MAX_WORLD_SIZE
                ),
            }));
        }
        if rank >= world_size {
            return Err(Error::Launcher(LauncherError::Contradiction {
                launcher: launcher.name(),
                variables: values(false),
                reason: "the rank is not below the world size".into(),
            }));
        }
        if local_rank.is_some_and(|l| l >= world_size) {
            return Err(Error::Launcher(LauncherError::Contradiction {
                launcher: launcher.name(),
                variables: values(true),
                reason: "the local rank is not below the world size".into(),
            }));
        }
        Ok(Reading {
            launcher,
            rank,
            world_size,
            local_rank,
        })
    })();
    match result {
        Ok(r) => Ok(Some(r)),
        Err(e) if strict => Err(e),
        Err(_) => Ok(None),
    }
}

/// The CUDA device ordinal for a local rank, as `torch.cuda.set_device(local_rank)` picks it:
/// ordinals count the devices CUDA can see, which `CUDA_VISIBLE_DEVICES` restricts and
/// renumbers from 0. When it lists exactly one device (launchers that give each task its own GPU,
/// e.g. Slurm's `--gpus-per-task=1`, set it so), that device is ordinal 0 for every rank; when
/// it lists several, the local rank must be below their count. An unknown local rank is
/// device 0. CUDA reads the list up to its first invalid entry, so `-1` (or any entry starting
/// with `-`) ends it: `CUDA_VISIBLE_DEVICES=-1` makes no device visible.
///
/// # Errors
/// [`LauncherError::Contradiction`] when the local rank is not below the number of devices
/// `CUDA_VISIBLE_DEVICES` lists, or it makes none visible.
pub fn cuda_ordinal(
    local_rank: Option<usize>,
    cuda_visible_devices: Option<&str>,
) -> Result<usize> {
    let local = local_rank.unwrap_or(0);
    let Some(list) = cuda_visible_devices else {
        return Ok(local);
    };
    let visible = list
        .split(',')
        .map(str::trim)
        .take_while(|d| !d.is_empty() && !d.starts_with('-'))
        .count();
    match visible {
        0 => Err(Error::Launcher(LauncherError::Contradiction {
            launcher: "cuda",
            variables: vec![("CUDA_VISIBLE_DEVICES".into(), list.to_string())],
            reason: "it makes no CUDA device visible (CUDA reads the list up to its first \
                     invalid entry, such as -1)"
                .into(),
        })),
        1 => Ok(0),
        n if local < n => Ok(local),
        n => Err(Error::Launcher(LauncherError::Contradiction {
            launcher: "cuda",
            variables: vec![
                ("local rank".into(), local.to_string()),
                ("CUDA_VISIBLE_DEVICES".into(), list.to_string()),
            ],
            reason: format!("the local rank is not below the {n} visible devices"),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn placed(pairs: &[(&str, &str)]) -> Placement {
        resolve(None, None, &env(pairs)).unwrap()
    }

    #[test]
    fn every_launcher_is_read() {
        let p = placed(&[("RANK", "2"), ("WORLD_SIZE", "3"), ("LOCAL_RANK", "1")]);
        assert_eq!((p.rank, p.world_size, p.local_rank), (2, 3, Some(1)));
        assert_eq!(p.source, Source::Launcher(Launcher::Torchrun));
        let p = placed(&[
            ("OMPI_COMM_WORLD_RANK", "4"),
            ("OMPI_COMM_WORLD_SIZE", "8"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
        ]);
        assert_eq!((p.rank, p.world_size, p.local_rank), (4, 8, Some(0)));
        assert_eq!(p.source, Source::Launcher(Launcher::OpenMpi));
        let p = placed(&[("PMI_RANK", "1"), ("PMI_SIZE", "2")]);
        assert_eq!((p.rank, p.world_size, p.local_rank), (1, 2, None));
        assert_eq!(p.source, Source::Launcher(Launcher::Mpich));
        let p = placed(&[
            ("PMI_RANK", "1"),
            ("PMI_SIZE", "2"),
            ("MPI_LOCALRANKID", "1"),
        ]);
        assert_eq!(p.local_rank, Some(1));
        let p = placed(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "6"),
            ("SLURM_LOCALID", "2"),
        ]);
        assert_eq!((p.rank, p.world_size, p.local_rank), (5, 6, Some(2)));
        assert_eq!(p.source, Source::Launcher(Launcher::Slurm));
        assert!(p.outer.is_empty());
        assert_eq!(p.to_string(), "rank 5 of 6, local rank 2, from slurm");
    }

    #[test]
    fn explicit_values_win() {
        let e = env(&[("RANK", "2"), ("WORLD_SIZE", "3"), ("LOCAL_RANK", "1")]);
        let p = resolve(Some(0), Some(5), &e).unwrap();
        assert_eq!((p.rank, p.world_size, p.source), (0, 5, Source::Explicit));
        // The environment describes another process: its local rank is not ours.
        assert_eq!(p.local_rank, None);
        // It does when it agrees.
        assert_eq!(resolve(Some(2), Some(3), &e).unwrap().local_rank, Some(1));
        // A broken environment does not matter when both values are explicit.
        let broken = env(&[("RANK", "x"), ("SLURM_NTASKS", "4")]);
        assert_eq!(resolve(Some(1), Some(2), &broken).unwrap().rank, 1);
        assert!(matches!(
            resolve(Some(2), Some(2), &broken),
            Err(Error::RankOutOfRange {
                rank: 2,
                world_size: 2
            })
        ));
        assert!(matches!(
            resolve(Some(0), Some(0), &broken),
            Err(Error::ZeroWorldSize)
        ));
        let only_rank = resolve(Some(1), None, &e).unwrap_err();
        assert!(
            matches!(&only_rank, Error::Launcher(LauncherError::Incomplete { missing, .. }) if missing == &["--world-size"]),
            "{only_rank}"
        );
    }

    #[test]
    fn inner_launchers_win_over_outer_ones() {
        // `srun -n 2 torchrun --nproc_per_node=4`: Slurm's task 1 runs torchrun's ranks 4..8.
        let p = placed(&[
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
            ("RANK", "6"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "2"),
        ]);
        assert_eq!((p.rank, p.world_size, p.local_rank), (6, 8, Some(2)));
        assert_eq!(p.source, Source::Launcher(Launcher::Torchrun));
        assert_eq!(p.outer.len(), 1);
        assert_eq!(p.outer[0].launcher, Launcher::Slurm);
        assert!(p.to_string().contains("slurm also set (rank 1 of 2"), "{p}");
        // `mpirun -np 3` inside an sbatch script: Slurm's batch step says 0 of 1.
        let p = placed(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("OMPI_COMM_WORLD_RANK", "2"),
            ("OMPI_COMM_WORLD_SIZE", "3"),
        ]);
        assert_eq!((p.rank, p.world_size), (2, 3));
        assert_eq!(p.source, Source::Launcher(Launcher::OpenMpi));
        // An outer launcher with a partial set is ignored (an sbatch script sets SLURM_NTASKS).
        let p = placed(&[("SLURM_NTASKS", "4"), ("RANK", "1"), ("WORLD_SIZE", "2")]);
        assert_eq!((p.rank, p.world_size, p.outer.len()), (1, 2, 0));
        // Open MPI and MPICH agreeing is fine.
        let p = placed(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("PMI_RANK", "1"),
            ("PMI_SIZE", "2"),
        ]);
        assert_eq!((p.rank, p.source), (1, Source::Launcher(Launcher::OpenMpi)));
    }

    #[test]
    fn missing_variables_are_an_error_listing_what_was_looked_for() {
        let e = resolve(None, None, &env(&[("CUDA_VISIBLE_DEVICES", "0")])).unwrap_err();
        let Error::Launcher(LauncherError::NotDetected { looked_for }) = &e else {
            panic!("{e}")
        };
        assert_eq!(looked_for.len(), 4);
        let msg = e.to_string();
        for v in [
            "RANK",
            "WORLD_SIZE",
            "SLURM_PROCID",
            "OMPI_COMM_WORLD_RANK",
            "PMI_RANK",
            "--rank",
        ] {
            assert!(msg.contains(v), "{msg} lacks {v}");
        }
    }

    #[test]
    fn partial_sets_are_an_error_naming_the_variables() {
        type Vars<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Vars<'_>, &str, &[&str], &[&str]); 5] = [
            (&[("RANK", "1")], "torchrun", &["RANK"], &["WORLD_SIZE"]),
            (
                &[("LOCAL_RANK", "0")],
                "torchrun",
                &["LOCAL_RANK"],
                &["RANK", "WORLD_SIZE"],
            ),
            (
                &[("SLURM_NTASKS", "3"), ("SLURM_LOCALID", "0")],
                "slurm",
                &["SLURM_NTASKS", "SLURM_LOCALID"],
                &["SLURM_PROCID"],
            ),
            (
                &[("OMPI_COMM_WORLD_SIZE", "3")],
                "openmpi",
                &["OMPI_COMM_WORLD_SIZE"],
                &["OMPI_COMM_WORLD_RANK"],
            ),
            (&[("PMI_RANK", "0")], "mpich", &["PMI_RANK"], &["PMI_SIZE"]),
        ];
        for (vars, name, want_set, want_missing) in cases {
            let e = resolve(None, None, &env(vars)).unwrap_err();
            let Error::Launcher(LauncherError::Incomplete {
                launcher,
                set,
                missing,
            }) = &e
            else {
                panic!("{vars:?}: {e}")
            };
            assert_eq!(*launcher, name);
            assert_eq!(set, want_set);
            assert_eq!(missing, want_missing);
            let msg = e.to_string();
            for v in want_set.iter().chain(want_missing) {
                assert!(msg.contains(v), "{msg} lacks {v}");
            }
        }
        // The innermost launcher decides: a partial torchrun set is not rescued by Slurm.
        let e = resolve(
            None,
            None,
            &env(&[("RANK", "1"), ("SLURM_PROCID", "1"), ("SLURM_NTASKS", "2")]),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Launcher(LauncherError::Incomplete {
                    launcher: "torchrun",
                    ..
                })
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_and_contradicting_values_are_errors_naming_them() {
        let e = resolve(None, None, &env(&[("RANK", "one"), ("WORLD_SIZE", "3")])).unwrap_err();
        assert!(
            matches!(&e, Error::Launcher(LauncherError::Variable { name, value, .. }) if name == "RANK" && value == "one"),
            "{e}"
        );
        let e = resolve(None, None, &env(&[("PMI_RANK", "0"), ("PMI_SIZE", "-2")])).unwrap_err();
        assert!(
            matches!(&e, Error::Launcher(LauncherError::Variable { name, .. }) if name == "PMI_SIZE"),
            "{e}"
        );
        let e = resolve(
            None,
            None,
            &env(&[
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "1"),
                ("SLURM_LOCALID", "x"),
            ]),
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::Launcher(LauncherError::Variable { name, .. }) if name == "SLURM_LOCALID"),
            "{e}"
        );
        let contradiction = |vars: &[(&str, &str)], names: &[&str]| {
            let e = resolve(None, None, &env(vars)).unwrap_err();
            let Error::Launcher(LauncherError::Contradiction { variables, .. }) = &e else {
                panic!("{vars:?}: {e}")
            };
            let got: Vec<&str> = variables.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(got, names, "{e}");
            let msg = e.to_string();
            for (n, v) in variables {
                assert!(msg.contains(&format!("{n}={v}")), "{msg}");
            }
        };
        contradiction(
            &[("RANK", "3"), ("WORLD_SIZE", "3")],
            &["RANK", "WORLD_SIZE"],
        );
        contradiction(
            &[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "0")],
            &["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"],
        );
        contradiction(
            &[
                ("SLURM_PROCID", "1"),
                ("SLURM_NTASKS", "4"),
                ("SLURM_LOCALID", "4"),
            ],
            &["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"],
        );
        contradiction(
            &[
                ("OMPI_COMM_WORLD_RANK", "1"),
                ("OMPI_COMM_WORLD_SIZE", "2"),
                ("PMI_RANK", "0"),
                ("PMI_SIZE", "2"),
            ],
            &[
                "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_SIZE",
                "PMI_RANK",
                "PMI_SIZE",
            ],
        );
    }

    #[test]
    fn the_cuda_device_is_the_local_rank_within_the_visible_devices() {
        assert_eq!(cuda_ordinal(Some(3), None).unwrap(), 3);
        assert_eq!(cuda_ordinal(None, None).unwrap(), 0);
        assert_eq!(cuda_ordinal(Some(1), Some("4,5,6")).unwrap(), 1);
        // One device per task: it is device 0 whatever the local rank.
        assert_eq!(cuda_ordinal(Some(3), Some("7")).unwrap(), 0);
        assert_eq!(
            cuda_ordinal(Some(2), Some("GPU-1b2c,GPU-3d4e,GPU-5f60")).unwrap(),
            2
        );
        let e = cuda_ordinal(Some(2), Some("0,1")).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::Launcher(LauncherError::Contradiction {
                    launcher: "cuda",
                    ..
                })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("CUDA_VISIBLE_DEVICES=0,1"), "{e}");
        // CUDA stops at the first empty entry; an empty list hides every device.
        assert!(cuda_ordinal(Some(0), Some("")).is_err());
        // -1 is invalid, so it hides every device (not one device, ordinal 0).
        for hidden in ["-1", " -1", "-1,0"] {
            let e = cuda_ordinal(Some(0), Some(hidden)).unwrap_err();
            assert!(
                e.to_string().contains("no CUDA device visible"),
                "{hidden:?}: {e}"
            );
        }
        // ...and ends the list where it stands: "0,-1,1" is one device.
        assert_eq!(cuda_ordinal(Some(3), Some("0,-1,1")).unwrap(), 0);
    }

    #[test]
    fn world_sizes_beyond_the_limit_are_refused_before_any_allocation() {
        let huge = usize::MAX.to_string();
        let e = resolve(Some(0), Some(usize::MAX), &env(&[])).unwrap_err();
        assert!(matches!(e, Error::WorldSizeTooLarge { .. }), "{e}");
        assert!(e.to_string().contains(&huge), "{e}");
        let e = resolve(
            None,
            None,
            &env(&[("RANK", "0"), ("WORLD_SIZE", &huge), ("LOCAL_RANK", "0")]),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("WORLD_SIZE") && e.to_string().contains(&huge),
            "{e}"
        );
    }
}
