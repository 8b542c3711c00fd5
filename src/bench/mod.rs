//! What the benchmarks and the equivalence tests share: the synthetic workload, the naive
//! reference gather every output is checked against, and the memory check before a workload is
//! built. The harness itself (timing, floors, reports) is the `arraydrain bench` command's
//! (`src/bin/arraydrain/bench/`); the criterion benches are in `benches/`.
//!
//! Every size computed here is checked and every large buffer allocated is fallible: a
//! workload too large for the machine is an [`Error::HostAllocation`] before anything big is
//! touched, never an abort.
//!
//! [`Error::HostAllocation`]: crate::Error::HostAllocation

use std::sync::Arc;

use rayon::prelude::*;

use crate::batch::Batches;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::memory::{checked_bytes, HostBuf};
use crate::output::Materialized;
use crate::table::{Column, Table};

/// The deliberately naive reference: for each column, the bytes of each output row copied one
/// at a time, in order, from the table.
///
/// # Errors
/// [`Error::HostAllocation`] when an output column's size overflows or cannot be allocated;
/// [`Error::IndexOutOfBounds`] when an index is not a row of the table.
pub fn reference(table: &Table<'_>, batches: &Batches) -> Result<Vec<Vec<u8>>> {
    let idx = batches.indices();
    let rows = batches.rows();
    table
        .columns()
        .iter()
        .map(|c| {
            let bytes = checked_bytes(&[rows, c.row_bytes()], c.name())?;
            let mut out = Vec::new();
            out.try_reserve_exact(bytes)
                .map_err(|e| Error::alloc(bytes, format!("the reference of {}", c.name()), e))?;
            for p in 0..rows {
                // `p < batches.rows()`, so the index exists; a row past the table is an error.
                let i = idx.get(p).unwrap_or(usize::MAX);
                let Some(r) = c.row(i) else {
                    return Err(Error::IndexOutOfBounds {
                        index: i as u64,
                        position: p,
                        rows: c.rows(),
                    });
                };
                out.extend_from_slice(r);
            }
            Ok(out)
        })
        .collect()
}

/// Whether an output equals the reference, column by column, byte for byte.
pub fn verify(out: &Materialized, reference: &[Vec<u8>]) -> bool {
    out.columns().len() == reference.len()
        && out
            .columns()
            .iter()
            .zip(reference)
            .all(|(c, r)| c.as_bytes() == r.as_slice())
}

/// The built-in workload with `x` f32 `[rows, dim]`: see [`synthetic_workload`].
///
/// # Errors
/// As [`synthetic_workload`].
pub fn synthetic_table(rows: usize, dim: usize, seed: u64) -> Result<Table<'static>> {
    synthetic_workload(rows, DType::F32, &[dim], seed)
}

/// The built-in workload: `x` of `dtype` with row shape `row_shape` (floats uniform in
/// `[0, 1)`, integers and raw types random bytes) and `y` i64 `[rows]` labels in `0..10`, like the
/// classic "features and labels" example — or an image data set with `dtype` u8 and row shape
/// `[3, 224, 224]`. Deterministic for a seed.
///
/// # Errors
/// [`Error::HostAllocation`] when the table does not fit in memory or its size overflows.
pub fn synthetic_workload(
    rows: usize,
    dtype: DType,
    row_shape: &[usize],
    seed: u64,
) -> Result<Table<'static>> {
    const CHUNK: usize = 1 << 16;
    let mut parts = row_shape.to_vec();
    parts.extend([dtype.size(), rows]);
    let x_bytes = checked_bytes(&parts, "x")?;
    let mut x = HostBuf::zeroed(x_bytes, "x")?;
    match dtype {
        DType::F32 => {
            let xs: &mut [f32] = bytemuck::cast_slice_mut(x.as_bytes_mut());
            xs.par_chunks_mut(CHUNK).enumerate().for_each(|(k, c)| {
                let mut s = seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                for v in c {
                    s = splitmix(s);
                    *v = (s >> 40) as f32 / (1u64 << 24) as f32;
                }
            });
        }
        DType::F64 => {
            let xs: &mut [f64] = bytemuck::cast_slice_mut(x.as_bytes_mut());
            xs.par_chunks_mut(CHUNK).enumerate().for_each(|(k, c)| {
                let mut s = seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                for v in c {
                    s = splitmix(s);
                    *v = (s >> 11) as f64 / (1u64 << 53) as f64;
                }
            });
        }
        _ => {
            x.as_bytes_mut()
                .par_chunks_mut(CHUNK * 8)
                .enumerate()
                .for_each(|(k, c)| {
                    let mut s = seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    for w in c.chunks_mut(8) {
                        s = splitmix(s);
                        w.copy_from_slice(&s.to_le_bytes()[..w.len()]);
                    }
                });
        }
    }
    let mut y = HostBuf::zeroed(checked_bytes(&[rows, 8], "y")?, "y")?;
    let ys: &mut [i64] = bytemuck::cast_slice_mut(y.as_bytes_mut());
    ys.par_chunks_mut(CHUNK).enumerate().for_each(|(k, c)| {
        let mut s = !seed ^ (k as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        for v in c {
            s = splitmix(s);
            *v = ((s >> 33) % 10) as i64;
        }
    });
    Table::new(vec![
        Column::from_shared("x", dtype, row_shape, rows, Arc::new(x))?,
        Column::from_shared("y", DType::I64, &[], rows, Arc::new(y))?,
    ])
}

/// Host bytes a benchmark run needs at its peak: the table (`table_rows` rows of `row_bytes`),
/// the reference and the CPU floor's reused copy (each `out_rows` rows), one output being timed
/// and one fresh floor copy. Checked arithmetic: an overflow is an error.
///
/// # Errors
/// [`Error::HostAllocation`] when the size overflows.
pub fn peak_host_bytes(table_rows: usize, out_rows: usize, row_bytes: usize) -> Result<u128> {
    let table = checked_bytes(&[table_rows, row_bytes], "the benchmark table")?;
    let out = checked_bytes(&[out_rows, row_bytes], "the benchmark output")?;
    Ok(table as u128 + 4 * out as u128)
}

/// Refuses a benchmark whose peak host memory ([`peak_host_bytes`]) exceeds what this process
/// may use now ([`crate::sysmem::available_bytes`]; the check passes when that is unknown).
///
/// # Errors
/// [`Error::HostAllocation`] naming the need and what is available.
pub fn check_fits(table_rows: usize, out_rows: usize, row_bytes: usize) -> Result<()> {
    let need = peak_host_bytes(table_rows, out_rows, row_bytes)?;
    match crate::sysmem::available_bytes() {
        Some(avail) if need > avail as u128 => Err(Error::alloc(
            need,
            "the benchmark (table, reference, floors and one output)",
            format!("only {avail} bytes are available to this process"),
        )),
        _ => Ok(()),
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Byte written over outputs before each run, so an element a strategy failed to write shows.
pub const POISON: u8 = 0xA5;

/// Fills every output column with [`POISON`] on all threads (for tests that check every byte of
/// an output is written).
pub fn poison(out: &mut Materialized) {
    for c in out.columns_mut() {
        c.as_bytes_mut()
            .par_chunks_mut(1 << 20)
            .for_each(|b| b.fill(POISON));
    }
}
