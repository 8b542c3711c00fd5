//! Structured descriptors built at random: their element size is the packed sum NumPy's list
//! form defines (computed here independently, from the generated tree), a header carrying one
//! round-trips with the descriptor verbatim, and no input — however deep or mangled — panics.

use arraydrain::dtype::Opaque;
use arraydrain::npy::{NpyHeader, MAGIC};
use arraydrain::DType;
use proptest::prelude::*;

/// A generated descriptor: its Python literal and the element size it must have.
#[derive(Debug, Clone)]
struct Gen {
    text: String,
    size: usize,
}

fn scalar() -> impl Strategy<Value = Gen> {
    prop::sample::select(vec![
        ("'<f4'", 4),
        ("'>f8'", 8),
        ("'|i1'", 1),
        ("'<c16'", 16),
        ("'|S3'", 3),
        ("'<U2'", 8),
        ("'<M8[ns]'", 8),
        ("'>m8[2D]'", 8),
        ("'|V5'", 5),
        ("'?'", 1),
        ("'<f16'", 16),
    ])
    .prop_map(|(t, s)| Gen {
        text: t.to_string(),
        size: s,
    })
}

fn descr() -> impl Strategy<Value = Gen> {
    scalar().prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            // A structured list: fields named f0, f1 … (unique), some padding, some subarrays,
            // some with titles.
            prop::collection::vec((inner.clone(), prop::option::of(1usize..4), 0u8..4), 0..5)
                .prop_map(|fields| {
                    let mut parts = Vec::new();
                    let mut size = 0;
                    for (i, (g, dim, kind)) in fields.into_iter().enumerate() {
                        let n = dim.unwrap_or(1);
                        let text = match (kind, dim) {
                            (0, _) => format!("('', '|V{}')", g.size),
                            (1, Some(d)) => format!("('f{i}', {}, ({d},))", g.text),
                            (2, _) => format!("(('title {i}', 'f{i}'), {})", g.text),
                            _ => format!("('f{i}', {})", g.text),
                        };
                        size += match (kind, dim) {
                            (0, _) => g.size,
                            (1, Some(_)) => g.size * n,
                            _ => g.size,
                        };
                        parts.push(text);
                    }
                    Gen {
                        text: format!("[{}]", parts.join(", ")),
                        size,
                    }
                }),
            // A subarray `(base, shape)`.
            (inner, prop::collection::vec(0usize..4, 1..3)).prop_map(|(g, dims)| {
                let shape: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
                Gen {
                    text: format!("({}, ({},))", g.text, shape.join(", ")),
                    size: g.size * dims.iter().product::<usize>(),
                }
            }),
        ]
    })
}

fn header(version: u8, dict: &str) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend([version, 0]);
    h.extend((dict.len() as u32).to_le_bytes());
    h.extend(dict.as_bytes());
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn structured_sizes_are_packed_sums_and_round_trip(g in descr(), rows in 0usize..5) {
        let o = Opaque::new(&g.text).map_err(|e| TestCaseError::fail(format!("{}: {e}", g.text)))?;
        prop_assert_eq!(o.size(), g.size, "{}", g.text);
        let dtype = DType::Opaque(o);
        let bytes = NpyHeader::encode(&dtype, &[rows, 2]).unwrap();
        let h = NpyHeader::parse(&bytes).unwrap();
        prop_assert_eq!(h.data_len, rows * 2 * g.size);
        // Numeric dtypes come back as themselves; opaque ones with the descriptor verbatim.
        prop_assert!(h.dtype == dtype || !h.dtype.is_opaque(), "{:?}", h.dtype);
    }

    #[test]
    fn mangled_descriptors_never_panic(g in descr(), cut in 0usize..400, junk in "[\\[\\](),' a-zA-Z0-9<>|]{0,6}") {
        let mut text = g.text.clone();
        let at = text.char_indices().map(|(i, _)| i).nth(cut % (text.len() + 1)).unwrap_or(text.len());
        text.insert_str(at, &junk);
        let _ = Opaque::new(&text);
        let dict = format!("{{'descr': {text}, 'fortran_order': False, 'shape': (3,), }}");
        let _ = NpyHeader::parse(&header(2, &dict));
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    for open in ["[", "(", "[(", "{'a': "] {
        let text = open.repeat(100_000);
        assert!(Opaque::new(&text).is_err());
        let dict = format!("{{'descr': {text}, 'fortran_order': False, 'shape': (3,), }}");
        let e = NpyHeader::parse(&header(2, &dict)).unwrap_err();
        assert!(e.len() < 400, "{e}");
    }
}
