//! The `.npy` header parser and file readers never panic on arbitrary bytes: every input is
//! either read or refused with an error naming the file.

use arraydrain::npy::{read_npy, read_npz, NpyHeader, MAGIC};
use proptest::prelude::*;

fn header(dict: &str) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend([1u8, 0]);
    let len = dict.len() as u16;
    h.extend(len.to_le_bytes());
    h.extend(dict.as_bytes());
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = NpyHeader::parse(&bytes);
        let mut with_magic = MAGIC.to_vec();
        with_magic.extend(&bytes);
        let _ = NpyHeader::parse(&with_magic);
    }

    #[test]
    fn parse_never_panics_on_mangled_dicts(
        descr in "[<>|=]?[a-zA-Z]{0,2}[0-9]{0,3}",
        fortran in prop_oneof![Just("False"), Just("True"), Just("1"), Just("")],
        shape in "\\(([0-9]{0,21}, ?){0,4}[0-9]{0,21}\\)?",
        junk in "[ ,:'{}()a-z0-9]{0,12}",
    ) {
        let dict = format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, {junk}}}");
        let _ = NpyHeader::parse(&header(&dict));
    }

    #[test]
    fn files_of_random_bytes_are_refused_with_the_file_named(bytes in prop::collection::vec(any::<u8>(), 0..400), npz in any::<bool>()) {
        let dir = tempfile::Builder::new().prefix("arraydrain-fuzz-").tempdir().unwrap();
        let path = dir.path().join(if npz { "r.npz" } else { "r.npy" });
        std::fs::write(&path, &bytes).unwrap();
        let err = if npz { read_npz(&path).err() } else { read_npy(&path).err() };
        if let Some(e) = err {
            prop_assert!(e.to_string().contains("r.np"), "{e}");
        }
    }
}
