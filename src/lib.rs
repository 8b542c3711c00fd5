//! # arraydrain
//!
//! Drains a data loader into preallocated host arrays as fast as the hardware allows.
//!
//! The data flows one way, and the modules read in that order:
//!
//! 1. [`Table`] (`table`, `dtype`): named columns sharing one row count; each a [`DType`] and a
//!    row shape over contiguous row-major bytes — borrowed from `ndarray` views, owned, or
//!    memory-mapped. Validated once, at construction. A dtype is numeric (viewed as a Rust
//!    type) or opaque: any other fixed-size NumPy dtype, carried as bytes with its descriptor.
//! 2. [`Order`] and [`Shard`] (`sampler`): sequential, a seeded shuffle, explicit indices, and
//!    PyTorch `DistributedSampler` sharding, resolved into validated [`Indices`].
//! 3. [`Batches`] (`batch`): `batch_size` and `drop_last`, pure arithmetic over the indices.
//! 4. Gather (`gather`): the [`Strategy`]s — the classic `Concat` and `PerBatch` recipes, the
//!    parallel `Preallocated` gather straight into the output, and on CUDA the `Pinned` engine
//!    (gather kernel + asynchronous copies into pinned output).
//! 5. [`Materialized`] (`output`): one array per column, read through typed `ndarray` views
//!    (opaque columns as raw row bytes), with a [`Report`] of rows, bytes, time and the peak
//!    bytes the strategy allocated.
//!
//! Two ways in: a [`Loader`] over an indexable table (iterate it like a `DataLoader`, or
//! `materialize` it), and [`drain()`] over any iterator of [`Batch`]es.
//!
//! ## Layout
//!
//! One line per module, in the order the data flows. The imports between modules form no cycle
//! (checked by `tests/layout.rs`), and every module returns the one [`Error`].
//!
//! - `error`: [`Error`], grouped by domain: orders, streams and memory; tables and columns
//!   ([`TableError`]); files ([`FileError`]); distributed runs ([`launcher::LauncherError`], [`shards::ShardError`]); CUDA
//!   ([`cuda::CudaError`]); with typed sources.
//! - `dtype`: element types, numeric and opaque, and the parsing of NumPy descriptors.
//! - `memory`, `sysmem`: fallible, huge-page-advised host buffers, the parallel copy and the
//!   peak-bytes counter; the memory this process may use.
//! - `table`: named columns sharing one row count, validated once.
//! - `sampler`, `batch`: index orders (sequential, seeded shuffle, explicit, `DistributedSampler`
//!   shards); `batch_size` and `drop_last`.
//! - `gather`: the strategies and the CPU gather into output slices.
//! - `output`: [`Materialized`], its columns, storage kinds and [`Report`].
//! - `loader`, `drain`: the two ways in, an indexable table and any stream of batches.
//! - `cuda`: the device engine (probe, NVRTC, gather kernel, pinned output, pipeline).
//! - `fsafe`, `mmap`: the one staged all-or-nothing output mechanism and safe folder reading;
//!   file maps that survive a truncated file.
//! - `npy`: NumPy `.npy` / `.npz` in and out, memory-mapped output larger than RAM.
//! - `convert`: NumPy files in, drained and reordered NumPy files out ([`convert::ConvertOptions`]).
//! - `launcher`, `shards`: rank and world size from torchrun, Slurm or MPI; one rank's part of a
//!   distributed conversion beside a manifest, the check and the merge
//!   ([`shards::MergeOptions`]).
//! - `writer`: the other direction: rows pushed at dataset indices (model outputs) into one
//!   `.npy`, `.npz`, folder or in-memory array through a bounded ring, committed once when
//!   every row is written ([`Writer`]).
//! - `bench`: what the benchmarks and tests share: the synthetic workload and the naive
//!   reference gather every output is checked against.
//!
//! The command line (`src/bin/arraydrain/`, the `cli` feature, on by default) parses arguments,
//! draws progress bars from [`convert::ConvertOptions::progress`], removes a run's temporary
//! files on `SIGINT` / `SIGTERM` through [`fsafe::remove_all_before_exit`], prints `info` and
//! runs the benchmark harness (timing, same-run floors, the report);
//! the library itself parses no command line, draws nothing and installs no signal handler
//! (only the file maps' `SIGBUS` handler, which keeps a truncated input from crashing a read).
//! Unsafe code is denied crate-wide and allowed in exactly two modules, `cuda` and `mmap`,
//! where every block carries a `// SAFETY:` comment.
//!
//! ```
//! use arraydrain::{Loader, Strategy, Table};
//! use ndarray::{Array1, Array2};
//!
//! let x = Array2::from_shape_fn((1000, 10), |(i, j)| (i * 10 + j) as f32);
//! let y = Array1::from_iter((0..1000).map(|i| i as i64 % 3));
//! let table = Table::builder().view("x", x.view()).view("y", y.view()).build()?;
//!
//! let out = Loader::new(&table).batch_size(10).shuffle(7).materialize(Strategy::Auto)?;
//! assert_eq!(out.view::<f32>("x")?.shape(), &[1000, 10]);
//! println!("{} rows, {} bytes, peak {} bytes", out.rows(), out.report().bytes, out.report().peak_alloc_bytes);
//! # Ok::<(), arraydrain::Error>(())
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod dtype;
pub mod memory;
pub mod sysmem;
pub mod fsafe;
#[allow(unsafe_code)]
pub mod mmap;
pub mod npy;
pub mod table;
pub mod sampler;
pub mod batch;
pub mod gather;
pub mod output;
pub mod loader;
pub mod drain;
pub mod bench;
#[allow(unsafe_code)]
pub mod cuda;
pub mod convert;
pub mod launcher;
pub mod shards;
pub mod writer;

pub use batch::Batches;
pub use drain::{drain, DrainOptions};
pub use dtype::{DType, Element, Opaque};
pub use error::{Error, FileError, Result};
pub use gather::Strategy;
pub use loader::{BatchIter, Loader, OutputSpec};
pub use output::{Backend, Batch, ColumnArray, Materialized, Report, Storage, StorageKind};
pub use sampler::{IndexSlice, Indices, Order, Shard};
pub use table::{Column, Table, TableError};
pub use writer::{Destination, Writer, WriterBuilder, Written};

// The README's examples run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
