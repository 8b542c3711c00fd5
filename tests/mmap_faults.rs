//! A mapped input that another process truncates or rewrites while it is read: with
//! `catch_input_faults` installed the read past the new end does not kill the process with
//! SIGBUS; it reads zeros, and the map reports the file as changed, so whatever was read from it
//! is discarded rather than trusted.

use std::fs;

use arraydrain::mmap::{self, ReadMap};
use arraydrain::Error;
use arraydrain::FileError;

#[test]
fn reads_past_a_truncated_end_are_caught_and_reported() {
    mmap::catch_input_faults().unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("in.bin");
    let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8 + 1).collect();
    fs::write(&path, &data).unwrap();
    let map = ReadMap::open(&path).unwrap();
    assert_eq!(map.bytes()[100_000], data[100_000]);
    map.check_unchanged().unwrap();
    mmap::verify_inputs(&[&path]).unwrap();

    // Another writer cuts the file to 4 KiB while it is mapped.
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096)
        .unwrap();
    // Reading every page past the new end faults; each is answered with zeros.
    let past: u64 = map.bytes()[8192..].iter().map(|&b| b as u64).sum();
    assert_eq!(past, 0);
    assert_eq!(map.bytes()[..4096], data[..4096]);
    let err = map.check_unchanged().unwrap_err();
    assert!(
        matches!(&err, Error::File(FileError::FileChanged { path: p, reason }) if p == &path && reason.contains("faulted")),
        "{err}"
    );
    assert!(
        err.to_string().contains("changed while being read"),
        "{err}"
    );
    assert!(matches!(
        mmap::verify_inputs(&[&path]),
        Err(Error::File(FileError::FileChanged { .. }))
    ));
    drop(map);
    // Once the map is gone, nothing is left to report.
    mmap::verify_inputs(&[&path]).unwrap();
}

#[test]
fn a_file_rewritten_in_place_is_reported() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("in.bin");
    fs::write(&path, vec![7u8; 10_000]).unwrap();
    let map = ReadMap::open(&path).unwrap();
    map.check_unchanged().unwrap();
    // Same size, new contents and modification time.
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(&path, vec![8u8; 10_000]).unwrap();
    let err = map.check_unchanged().unwrap_err();
    assert!(
        matches!(&err, Error::File(FileError::FileChanged { reason, .. }) if reason.contains("modification time")),
        "{err}"
    );
}

#[test]
fn only_regular_files_are_mapped() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let err = ReadMap::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::File(FileError::BadFile { .. })),
        "{err}"
    );
    let err = ReadMap::open(std::path::Path::new("/dev/null")).unwrap_err();
    assert!(
        matches!(&err, Error::File(FileError::BadFile { reason, .. }) if reason.contains("not a regular file")),
        "{err}"
    );
}
