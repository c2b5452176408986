//! Why the journal is our own (ARCHITECTURE.md): acknowledged durable writes per second
//! with concurrent writers, for redb (one commit per write, its default immediate
//! durability), fjall (an insert and `persist(SyncData)` per write) and nextbest's
//! journal writer (`append_durable`, group commit), in one run on the same disk. Each
//! write is a 16-byte key and a 100-byte value; every writer waits for its write to be
//! durable before the next, as a service handler acknowledging an outcome does.
//!
//! `cargo run --release --example bench_kv --features compare-kv -- [WRITERS] [SECONDS]`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nextbest::storage::{Encode, Position, Writer, WriterOptions};

/// The allocator the `nextbest` binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("outcomes");
const VALUE: [u8; 100] = [7; 100];

fn key(writer: u64, i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&writer.to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

/// Runs `write` from `writers` threads for `seconds`; returns writes per second.
fn run(writers: u64, seconds: f64, write: impl Fn(u64, u64) + Send + Sync + 'static) -> f64 {
    let write = Arc::new(write);
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (write, done, count) = (Arc::clone(&write), Arc::clone(&done), Arc::clone(&count));
            std::thread::spawn(move || {
                let mut i = 0;
                while !done.load(Ordering::Relaxed) {
                    write(w, i);
                    count.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    done.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a writer panicked");
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

struct Raw([u8; 16]);

impl Encode for Raw {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
        out.extend_from_slice(&VALUE);
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let writers: u64 = args.first().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let seconds: f64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5.0);
    let dir = tempfile::tempdir()?;

    let redb = Arc::new(redb::Database::create(dir.path().join("outcomes.redb"))?);
    let rate = run(writers, seconds, move |w, i| {
        let tx = redb.begin_write().expect("begin");
        {
            let mut table = tx.open_table(TABLE).expect("table");
            table.insert(&key(w, i)[..], &VALUE[..]).expect("insert");
        }
        tx.commit().expect("commit");
    });
    println!("redb, one commit per write:        {rate:>8.0} writes/s");

    let fjall = fjall::Database::builder(dir.path().join("fjall")).open()?;
    let keyspace = fjall.keyspace("outcomes", fjall::KeyspaceCreateOptions::default)?;
    let rate = run(writers, seconds, move |w, i| {
        keyspace.insert(key(w, i), VALUE).expect("insert");
        fjall
            .persist(fjall::PersistMode::SyncData)
            .expect("persist");
    });
    println!("fjall, persist(SyncData) per write: {rate:>8.0} writes/s");

    let journal_dir = dir.path().join("journal");
    std::fs::create_dir_all(&journal_dir)?;
    let journal = Arc::new(Writer::start(
        &journal_dir,
        Position::default(),
        0,
        WriterOptions::default(),
    )?);
    let rate = run(writers, seconds, move |w, i| {
        journal.append_durable(Raw(key(w, i))).expect("append");
    });
    println!("nextbest journal, group commit:    {rate:>8.0} writes/s");
    Ok(())
}
