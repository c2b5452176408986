//! A cluster's journal as files: `export`, `evaluate`, `train` and `report` read journal
//! segments, so with `--cluster` they first copy the write and decisions streams into a
//! journal directory of segment files, the records in the order JetStream stored them
//! (by the stream leaders' store times, the two streams merged), each exactly the bytes
//! an embedded node's journal holds. From there everything is the files' code path: the
//! same traffic gives the same results.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::push};
use tokio_stream::StreamExt;

use super::{ClusterConfig, ClusterError};
use crate::storage::{Encode, Position, SyncMode, Writer, WriterOptions};

/// A record's payload as a stream message holds it (an `Entry`'s encoding).
struct Raw(Vec<u8>);

impl Encode for Raw {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
}

/// What [`fetch_journal`] copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetched {
    pub writes: u64,
    pub decisions: u64,
}

/// Reads a whole stream: (store time in ns, payload) of every record in it.
async fn read_stream(js: &jetstream::Context, name: &str) -> Result<Vec<(i128, Vec<u8>)>, String> {
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|e| format!("stream `{name}`: {e}"))?;
    let state = stream
        .info()
        .await
        .map_err(|e| format!("stream `{name}`: {e}"))?
        .state
        .clone();
    let last = state.last_sequence;
    let mut out = Vec::new();
    // Empty, or every message aged out (`max_age`) since.
    if state.messages == 0 {
        return Ok(out);
    }
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("reading stream `{name}`: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("reading stream `{name}`: {e}"))?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .map_err(|_| format!("stream `{name}` delivered nothing for 10 s"))?;
        let Some(message) = next else { break };
        let message = message.map_err(|e| format!("reading stream `{name}`: {e}"))?;
        let info = message
            .info()
            .map_err(|e| format!("reading stream `{name}`: {e}"))?;
        // A batch rewritten by an erasure (`erase`) keeps its original's place.
        let stored_at = message
            .headers
            .as_ref()
            .and_then(|h| h.get(super::erase::STORED_AT))
            .and_then(|v| v.as_str().parse::<i128>().ok());
        let (seq, pending, at) = (
            info.stream_sequence,
            info.pending,
            stored_at.unwrap_or_else(|| info.published.unix_timestamp_nanos()),
        );
        // The write stream's catalogs and barriers are not journal records (see `catalog`
        // and `commit`).
        if !super::catalog::is_catalog(&message.subject)
            && !super::commit::is_barrier(&message.subject)
        {
            out.push((at, message.payload.to_vec()));
        }
        if pending == 0 || seq >= last {
            break;
        }
    }
    Ok(out)
}

/// Copies the cluster's write and decisions streams into `journal` (a new or empty
/// directory) as journal segments.
pub async fn fetch_journal(
    config: &ClusterConfig,
    journal: &Path,
) -> Result<Fetched, ClusterError> {
    let fail = |detail: String| ClusterError::Join {
        servers: config.servers.join(","),
        detail,
    };
    let client = async_nats::ConnectOptions::new()
        .name("nextbest journal reader")
        .connection_timeout(Duration::from_secs(5))
        .connect(config.servers.as_slice())
        .await
        .map_err(|e| fail(e.to_string()))?;
    let js = jetstream::new(client);
    let writes = read_stream(&js, &config.writes_stream())
        .await
        .map_err(fail)?;
    let decisions = read_stream(&js, &config.decisions_stream())
        .await
        .map_err(fail)?;
    // A decisions message is a batch of journal frames: one record each.
    let decisions: Vec<(i128, Vec<u8>)> = decisions
        .into_iter()
        .flat_map(|(at, batch)| {
            crate::storage::segment::frames(&batch)
                .map_while(|f| f.map(|f| (at, f.to_vec())))
                .collect::<Vec<_>>()
        })
        .collect();
    let fetched = Fetched {
        writes: writes.len() as u64,
        decisions: decisions.len() as u64,
    };
    let mut all: Vec<(i128, Vec<u8>)> = writes.into_iter().chain(decisions).collect();
    // Stable: within one stream the order stays the stream's.
    all.sort_by_key(|(at, _)| *at);
    let (journal, shown) = (journal.to_path_buf(), journal.display().to_string());
    tokio::task::spawn_blocking(move || {
        let options = WriterOptions {
            sync: SyncMode::Never,
            ..WriterOptions::default()
        };
        let writer = Writer::start(&journal, Position::default(), 0, options)?;
        for (_, payload) in all {
            writer
                .append(Raw(payload), false)
                .map_err(std::io::Error::other)?;
        }
        writer.close().map_err(std::io::Error::other)
    })
    .await
    .map_err(|e| fail(e.to_string()))?
    .map_err(|e| fail(format!("writing the journal to `{shown}`: {e}")))?;
    Ok(fetched)
}
