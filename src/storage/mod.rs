//! Storage primitives with no knowledge of the domain: append-only segment files of
//! checksummed frames, the group-commit writer that appends to them, and atomic file
//! replacement. The journal and the state snapshots are built on these.

pub mod segment;
pub mod writer;

pub use segment::{Damage, Position, SegmentReader};
pub use writer::{Durations, Encode, Permit, Stats, SyncMode, WriteError, Writer, WriterOptions};
