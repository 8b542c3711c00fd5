//! The CPU gather: row copies from a column's bytes straight into output bytes, in parallel on
//! rayon's pool. Indices were validated against the source's row count when the order was
//! resolved, so every `src[i]` below is in range; slices are still bounds-checked.

use rayon::prelude::*;

use crate::sampler::IndexSlice;

pub use crate::memory::par_copy;
use crate::memory::TASK_BYTES;

/// Gathers rows `idx` of `src` (rows of `row_bytes`) into `dst`, which holds exactly
/// `idx.len() × row_bytes` bytes, on all threads.
pub fn par_gather(src: &[u8], row_bytes: usize, idx: IndexSlice<'_>, dst: &mut [u8]) {
    if row_bytes == 0 || idx.is_empty() {
        return;
    }
    match idx {
        IndexSlice::Range { start, end } => {
            par_copy(&src[start * row_bytes..end * row_bytes], dst);
        }
        IndexSlice::List(list) => {
            let rows_per_task = (TASK_BYTES / row_bytes).max(1);
            if list.len() <= rows_per_task {
                gather(src, row_bytes, list, dst);
                return;
            }
            dst.par_chunks_mut(rows_per_task * row_bytes)
                .zip(list.par_chunks(rows_per_task))
                .for_each(|(d, l)| gather(src, row_bytes, l, d));
        }
    }
}

/// Gathers on the calling thread only (what a plain loader's collate step does).
pub fn gather_serial(src: &[u8], row_bytes: usize, idx: IndexSlice<'_>, dst: &mut [u8]) {
    match idx {
        IndexSlice::Range { start, end } => {
            dst.copy_from_slice(&src[start * row_bytes..end * row_bytes]);
        }
        IndexSlice::List(list) => gather(src, row_bytes, list, dst),
    }
}

/// One thread's row gather, with fixed-size copies for common row sizes.
fn gather(src: &[u8], row_bytes: usize, list: &[u64], dst: &mut [u8]) {
    match row_bytes {
        0 => {}
        1 => fixed::<1>(src, list, dst),
        2 => fixed::<2>(src, list, dst),
        4 => fixed::<4>(src, list, dst),
        8 => fixed::<8>(src, list, dst),
        12 => fixed::<12>(src, list, dst),
        16 => fixed::<16>(src, list, dst),
        32 => fixed::<32>(src, list, dst),
        64 => fixed::<64>(src, list, dst),
        _ => {
            for (d, &i) in dst.chunks_exact_mut(row_bytes).zip(list) {
                let at = i as usize * row_bytes;
                d.copy_from_slice(&src[at..at + row_bytes]);
            }
        }
    }
}

fn fixed<const N: usize>(src: &[u8], list: &[u64], dst: &mut [u8]) {
    // `[u8; N]` has alignment 1, so these casts only fail if a length is not a multiple of N,
    // which the table's and output's validated shapes rule out.
    let (Ok(s), Ok(d)) = (
        bytemuck::try_cast_slice::<u8, [u8; N]>(src),
        bytemuck::try_cast_slice_mut::<u8, [u8; N]>(dst),
    ) else {
        for (d, &i) in dst.chunks_exact_mut(N).zip(list) {
            let at = i as usize * N;
            d.copy_from_slice(&src[at..at + N]);
        }
        return;
    };
    for (o, &i) in d.iter_mut().zip(list) {
        *o = s[i as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_byte_rows_gather_to_nothing() {
        // Regression (found by the equivalence property): a row shape with a zero dimension.
        let mut dst: [u8; 0] = [];
        gather_serial(&[], 0, IndexSlice::List(&[0, 0, 0]), &mut dst);
        par_gather(&[], 0, IndexSlice::List(&[0, 0]), &mut dst);
    }

    #[test]
    fn gathers_match_a_naive_loop_for_every_row_size() {
        for rb in [1usize, 2, 3, 4, 8, 12, 16, 20, 32, 64, 520] {
            let rows = 3000;
            let src: Vec<u8> = (0..rows * rb).map(|i| (i * 7 % 251) as u8).collect();
            let list: Vec<u64> = (0..rows as u64).rev().chain([5, 5, 0]).collect();
            let mut dst = vec![0u8; list.len() * rb];
            par_gather(&src, rb, IndexSlice::List(&list), &mut dst);
            let mut naive = Vec::new();
            for &i in &list {
                naive.extend_from_slice(&src[i as usize * rb..(i as usize + 1) * rb]);
            }
            assert_eq!(dst, naive, "row_bytes {rb}");
            let mut seq = vec![0u8; 100 * rb];
            par_gather(&src, rb, IndexSlice::Range { start: 7, end: 107 }, &mut seq);
            assert_eq!(seq, src[7 * rb..107 * rb]);
        }
    }
}
