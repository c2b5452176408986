//! Any bytes after the journal's magic as a segment file: recovery and reading never
//! panic; they stop at the first damaged frame and say where.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nextbest::journal::{Reader, recover};
use nextbest::storage::segment::{MAGIC, Position, segment_path};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(data);
    std::fs::write(segment_path(dir.path(), 0), &bytes).expect("write");
    let mut reader = Reader::open(dir.path(), Position::default()).expect("open");
    let mut records = 0u64;
    while let Ok(Some(_)) = reader.next_record() {
        records += 1;
    }
    let end = recover(dir.path()).expect("recover");
    // Recovery cuts exactly the damaged tail: the records before it are all kept.
    let mut again = Reader::open(dir.path(), Position::default()).expect("open");
    let mut kept = 0u64;
    while let Ok(Some(_)) = again.next_record() {
        kept += 1;
    }
    assert_eq!(kept, records, "{end:?}");
});
