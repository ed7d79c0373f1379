//! The PostgreSQL store: several API servers over one database.
//!
//! Each process has one writer task that folds queued appends into one transaction (group
//! commit). The transaction takes a transaction-scoped advisory lock before it reads the
//! head, so appends from every process are serialised: positions are gap-free, the hash
//! chain is one chain, and a reader that has seen position N never later sees an event
//! below N appear. Commits are announced with `NOTIFY`; other processes `LISTEN` to wake
//! their projections and catch up by reading from their last position.

use super::*;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow, Postgres};
use sqlx::{Executor, Row, migrate::Migration, migrate::MigrationType, migrate::Migrator};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// The group's rows go to the server in COPY chunks of about this many bytes.
const COPY_CHUNK_BYTES: usize = 128 << 10;
const COPY_EVENTS: &str = "COPY events (position, stream, version, event_id, event_type, schema_version, recorded_at, data, hash, prev_hash) FROM STDIN (FORMAT binary)";

/// Connections in the pool unless the URL says `pool_max_connections=N`.
pub const POOL_CONNECTIONS_DEFAULT: u32 = 8;
/// How long a request waits for a pooled connection before the store counts as unavailable.
pub const POOL_ACQUIRE_TIMEOUT_MS: u64 = 5_000;
/// The longest pause between attempts to re-listen after a lost connection.
pub const LISTEN_BACKOFF_MS_MAX: u64 = 5_000;
/// Pool size from which the writer keeps one connection for itself between groups (the
/// listener holds another one for good).
const WRITER_KEEPS_CONNECTION_POOL_MIN: u32 = 3;
/// Pool sizes from which `read_all` keeps one, and two, connections of its own (the
/// ledger's per-decision catch-up and the projections' follower each find one free).
const READER_CONNECTIONS_POOL_MIN: [u32; 2] = [4, 6];

/// A connection kept out of the pool between uses. A pooled connection costs two extra
/// round trips per use (sqlx pings it when it is acquired and when it is released); a
/// kept one costs none. One that failed is closed and replaced by a fresh one next time.
type Kept = tokio::sync::Mutex<Option<PoolConnection<Postgres>>>;

/// Closes a kept connection that failed (its transaction, if any, dies with it).
fn discard(mut c: PoolConnection<Postgres>) {
    c.close_on_drop();
}

const MIGRATION_EVENTS: &str = include_str!("../../migrations/postgres/0001_events.sql");

fn migrator() -> Migrator {
    Migrator {
        migrations: Cow::Owned(vec![Migration::new(
            1,
            Cow::Borrowed("events"),
            MigrationType::Simple,
            Cow::Borrowed(MIGRATION_EVENTS),
            false,
        )]),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub struct PgStore {
    pool: PgPool,
    queue: WriterQueue,
    head_rx: watch::Receiver<u64>,
    failures: Arc<AtomicU64>,
    group_sizes: Arc<crate::metrics::Histogram>,
    /// What the writer committed last, for this process's followers.
    recent: Arc<Recent>,
    writer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    listener: tokio::task::JoinHandle<()>,
    /// `read_all`'s own connections (none for small pools).
    readers: Vec<Kept>,
}

/// Splits wattledger's own URL parameters from the ones PostgreSQL (sqlx) understands.
pub fn connect_options(url: &str) -> Result<(PgConnectOptions, u32), StoreError> {
    let invalid = |m: String| StoreError::Invalid(format!("{}: {m}", redact_url(url)));
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pool = POOL_CONNECTIONS_DEFAULT;
    let mut kept = Vec::new();
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("pool_max_connections", v)) => {
                pool = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| invalid("pool_max_connections must be 1 to 1000".into()))?;
            }
            _ => kept.push(kv),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let opts = PgConnectOptions::from_str(&rest).map_err(|e| invalid(format!("not a PostgreSQL URL: {e}")))?;
    Ok((opts, pool))
}

fn row_to_event(r: &PgRow) -> Result<RecordedEvent, StoreError> {
    let corrupt = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
    let data: String = r.try_get("data").map_err(corrupt)?;
    // jsonb keeps its own key order and spacing: the chain hashes the canonical text.
    let value: serde_json::Value =
        serde_json::from_str(&data).map_err(|e| StoreError::Corrupt(format!("stored data is not JSON: {e}")))?;
    Ok(RecordedEvent {
        position: r.try_get::<i64, _>("position").map_err(corrupt)? as u64,
        stream: r.try_get("stream").map_err(corrupt)?,
        version: r.try_get::<i64, _>("version").map_err(corrupt)? as u64,
        event_id: r.try_get("event_id").map_err(corrupt)?,
        event_type: r.try_get("event_type").map_err(corrupt)?,
        schema_version: r.try_get::<i32, _>("schema_version").map_err(corrupt)? as u32,
        recorded_at: r.try_get("recorded_at").map_err(corrupt)?,
        data: canonical_json(&value),
        hash: r.try_get("hash").map_err(corrupt)?,
        prev_hash: r.try_get("prev_hash").map_err(corrupt)?,
    })
}

const SELECT: &str = "SELECT position, stream, version, event_id, event_type, schema_version, recorded_at, data::text AS data, hash, prev_hash FROM events";
const READ_ALL: &str = "SELECT position, stream, version, event_id, event_type, schema_version, recorded_at, data::text AS data, hash, prev_hash FROM events WHERE position > $1 ORDER BY position LIMIT $2";

impl PgStore {
    /// Connects, applies the migrations (concurrent starters are serialised by sqlx's
    /// migration lock), and starts the writer and the listener.
    pub async fn open(url: &str) -> Result<Arc<Self>, StoreError> {
        let (opts, pool_size) = connect_options(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(std::time::Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS))
            .connect_with(opts)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to {}: {e}", redact_url(url))))?;
        migrator()
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrations failed: {e}")))?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&pool)
            .await
            .map_err(unavailable)?;
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
            .fetch_one(&pool)
            .await
            .map_err(unavailable)?;
        let (head_tx, head_rx) = watch::channel(head as u64);
        let head_tx = Arc::new(head_tx);
        let channel = format!("wattledger_{schema}");
        let (queue, rx) = WriterQueue::new();
        let failures = Arc::new(AtomicU64::new(0));
        let group_sizes = Arc::new(crate::metrics::Histogram::new(crate::metrics::GROUP_SIZE_BOUNDS));
        let recent = Arc::new(Recent::default());
        let own = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            pool: pool.clone(),
            head_tx: head_tx.clone(),
            own: own.clone(),
            failures: failures.clone(),
            group_sizes: group_sizes.clone(),
            channel: channel.clone(),
            recent: recent.clone(),
            known: None,
            conn: None,
            keep_conn: pool_size >= WRITER_KEEPS_CONNECTION_POOL_MIN,
        };
        let writer = tokio::spawn(writer.run(rx));
        let listener = tokio::spawn(listen(pool.clone(), channel, head_tx, own));
        Ok(Arc::new(Self {
            pool,
            queue,
            head_rx,
            failures,
            group_sizes,
            recent,
            writer: std::sync::Mutex::new(Some(writer)),
            listener,
            readers: READER_CONNECTIONS_POOL_MIN
                .iter()
                .filter(|&&m| pool_size >= m)
                .map(|_| Kept::new(None))
                .collect(),
        }))
    }
}

/// Follows other processes' commits: every notification carries the new head. The
/// notification of this process's own commit is left to its writer (`own`: the head its
/// commit in flight ends at), which moves the head once the records are in its tail: moved
/// by the notification, which often arrives first, the head sent this process's followers to
/// read back from the database what their tail was about to hold.
async fn listen(pool: PgPool, channel: String, head_tx: Arc<watch::Sender<u64>>, own: Arc<AtomicU64>) {
    let mut backoff_ms = 100;
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for appends; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(LISTEN_BACKOFF_MS_MAX);
                continue;
            }
        };
        if let Err(e) = listener.listen(&channel).await {
            tracing::warn!(error = %e, "cannot LISTEN for appends; retrying");
            tokio::time::sleep(std::time::Duration::from_millis(backoff_ms)).await;
            backoff_ms = (backoff_ms * 2).min(LISTEN_BACKOFF_MS_MAX);
            continue;
        }
        backoff_ms = 100;
        // A notification may have been missed while not listening: read the head once.
        if let Ok(h) = sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(position), 0) FROM events")
            .fetch_one(&pool)
            .await
            && h as u64 != own.load(Ordering::SeqCst)
        {
            head_tx.send_if_modified(|cur| bump(cur, h as u64));
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    if let Ok(p) = n.payload().parse::<u64>()
                        && p != own.load(Ordering::SeqCst)
                    {
                        head_tx.send_if_modified(|cur| bump(cur, p));
                    }
                }
                // The connection was lost (and will be re-established): re-read the head.
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "lost the LISTEN connection");
                    break;
                }
            }
        }
    }
}

/// The group's `COPY`: started on the connection the first time a chunk is ready.
async fn copy_in<'a, 'c>(
    conn: &mut Option<&'c mut sqlx::PgConnection>,
    copy: &'a mut Option<sqlx::postgres::PgCopyIn<&'c mut sqlx::PgConnection>>,
) -> Result<&'a mut sqlx::postgres::PgCopyIn<&'c mut sqlx::PgConnection>, sqlx::Error> {
    if let Some(c) = conn.take() {
        *copy = Some(c.copy_in_raw(COPY_EVENTS).await?);
    }
    Ok(copy.as_mut().expect("the copy has started"))
}

fn bump(cur: &mut u64, p: u64) -> bool {
    if p > *cur {
        *cur = p;
        true
    } else {
        false
    }
}

struct Writer {
    pool: PgPool,
    head_tx: Arc<watch::Sender<u64>>,
    /// The head the commit in flight ends at, whose notification the listener skips: this
    /// writer moves the head itself. Positions are serialised by the lock, so no other
    /// process's commit ends at the same head while this one stands; a commit that fails
    /// clears it (0), as another process may then take that head. Should the commit's
    /// answer be lost after the server committed it, the head moves with the notification if
    /// it comes after, with the next commit, or when a reader next asks the database (the
    /// projections do at least every 500 ms).
    own: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    group_sizes: Arc<crate::metrics::Histogram>,
    channel: String,
    recent: Arc<Recent>,
    /// What this writer knows of the log since its last commit (see [`Known`]).
    known: Option<Known>,
    /// The connection kept between groups (when `keep_conn`).
    conn: Option<PoolConnection<Postgres>>,
    keep_conn: bool,
}

/// What a group's transaction did: each append's outcome, the new head (if anything was
/// written), the head as of each `Head` request in queue order, and the records written.
type Written = (
    Vec<Result<Appended, StoreError>>,
    Option<u64>,
    Vec<Head>,
    Vec<Committed>,
);

/// The head this writer left after its last transaction, and the version of every stream it
/// has looked up or written since the log last moved under another writer. When the next
/// transaction finds the same head under the lock, nobody else wrote in between: the versions
/// are exact, only streams new to it are looked up, and the group's event ids are not looked
/// up at all: the unique index refuses a recorded one, and the group is then done again with
/// every lookup (`Failed::unchecked`).
#[derive(Default)]
struct Known {
    head: u64,
    hash: String,
    versions: HashMap<String, u64>,
}

/// Why a group's transaction failed: the error, whether the lock had been taken, and whether
/// it was the unique index refusing a row whose id the writer had not looked up.
struct Failed {
    error: StoreError,
    locked: bool,
    unchecked: bool,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>) {
        while let Some(first) = rx.recv().await {
            let mut msgs = vec![first];
            while msgs.len() < GROUP_COMMIT_REQUESTS_MAX {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            self.group_sizes.observe(msgs.len() as f64);
            self.commit_group(msgs).await;
        }
    }

    async fn commit_group(&mut self, msgs: Vec<WriterMsg>) {
        let failures = self.failures.load(Ordering::SeqCst);
        let mut appends: Vec<(AppendBatch, oneshot::Sender<Result<Appended, StoreError>>)> = Vec::new();
        let mut heads = Vec::new();
        let mut order = Vec::new();
        for m in msgs {
            match m {
                WriterMsg::Append(b, r) => {
                    order.push(true);
                    appends.push((b, r));
                }
                WriterMsg::Head(r) => {
                    order.push(false);
                    heads.push(r);
                }
            }
        }
        match self.write(failures, &appends, &order).await {
            Ok((outcomes, head_after, head_points, committed)) => {
                self.recent.push(committed);
                if let Some(h) = head_after {
                    self.head_tx.send_if_modified(|cur| bump(cur, h));
                }
                for ((_, reply), outcome) in appends.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
                for (reply, h) in heads.into_iter().zip(head_points) {
                    let _ = reply.send(Ok(h));
                }
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::SeqCst);
                tracing::error!(error = %e, "a commit failed; its appends are refused");
                for (_, reply) in appends {
                    let _ = reply.send(Err(e.clone()));
                }
                for reply in heads {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// One transaction for the whole group, on the kept connection (or a fresh one). A kept
    /// connection that fails before the transaction holds the lock (e.g. the server was
    /// restarted since the last group) is replaced and the group tried once more on a fresh
    /// one: nothing can have been written by then. Returns each append's outcome, the new
    /// head (if anything was written), and the head as of each `Head` request in queue order.
    async fn write(
        &mut self,
        failures: u64,
        appends: &[(AppendBatch, oneshot::Sender<Result<Appended, StoreError>>)],
        order: &[bool],
    ) -> Result<Written, StoreError> {
        let mut fresh = self.conn.is_none();
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.pool.acquire().await.map_err(unavailable)?,
        };
        let mut rechecked = false;
        loop {
            match self.write_on(&mut conn, failures, appends, order).await {
                Ok((done, extends, learned)) => {
                    match (&mut self.known, extends) {
                        (Some(k), true) => {
                            k.versions.extend(learned.versions);
                            (k.head, k.hash) = (learned.head, learned.hash);
                        }
                        (k, _) => *k = Some(learned),
                    }
                    if self.keep_conn {
                        self.conn = Some(conn);
                    }
                    return Ok(done);
                }
                Err(f) => {
                    discard(conn);
                    self.known = None;
                    if f.unchecked && !rechecked {
                        // Nothing was written; the same group again, every id looked up.
                        rechecked = true;
                    } else if f.locked || fresh {
                        return Err(f.error);
                    } else {
                        tracing::info!(error = %f.error, "a kept connection failed before the commit began; retrying on a fresh one");
                        fresh = true;
                    }
                    conn = self.pool.acquire().await.map_err(unavailable)?;
                }
            }
        }
    }

    /// The group's transaction: `BEGIN` and the lock; the head, the recorded ids and the
    /// stream versions in one query; the rows in one binary `COPY`; the notification and
    /// `COMMIT` in one message. An error says whether the lock had been taken.
    async fn write_on(
        &self,
        conn: &mut sqlx::PgConnection,
        failures: u64,
        appends: &[(AppendBatch, oneshot::Sender<Result<Appended, StoreError>>)],
        order: &[bool],
    ) -> Result<(Written, bool, Known), Failed> {
        // One simple-protocol message, two statements: the lock is held before the next
        // statement takes its snapshot, so that statement sees every earlier commit.
        conn.execute("BEGIN; SELECT pg_advisory_xact_lock(hashtext('wattledger:' || current_schema()))")
            .await
            .map_err(|e| Failed {
                error: unavailable(e),
                locked: false,
                unchecked: false,
            })?;
        let locked = |error: StoreError| Failed {
            error,
            locked: true,
            unchecked: false,
        };

        // What the checks need, in one query for the whole group: the head (kind 0), the
        // events already recorded under the group's ids (kind 1), each stream's version
        // (kind 2). Both lookups probe a unique index once per id or stream (`LATERAL …
        // LIMIT 1` keeps the planner from turning a long list into a scan of the table).
        // When the head is still the one this writer left ($3, $4), the ids are not looked up
        // and only the streams it does not know ($5) are (see [`Known`]).
        let ids: Vec<uuid::Uuid> = appends
            .iter()
            .flat_map(|(b, _)| b.events.iter().map(|e| e.event_id))
            .collect();
        let streams: Vec<String> = appends
            .iter()
            .map(|(b, _)| b.stream.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let (mut head, mut head_hash) = (0, GENESIS_HASH.to_string());
        let mut known: HashMap<uuid::Uuid, (u64, u64, String, String, String)> = HashMap::new();
        let mut versions: HashMap<String, u64> = HashMap::new();
        let (left_head, left_hash) = self
            .known
            .as_ref()
            .map_or((-1, ""), |k| (k.head as i64, k.hash.as_str()));
        let unknown: Vec<&String> = streams
            .iter()
            .filter(|s| !self.known.as_ref().is_some_and(|k| k.versions.contains_key(*s)))
            .collect();
        let lookups = sqlx::query(
            "WITH h AS (SELECT position, hash FROM events ORDER BY position DESC LIMIT 1), \
                  m AS (SELECT NOT EXISTS (SELECT 1 FROM h WHERE position = $3 AND hash = $4) AS moved) \
             SELECT 0::int AS k, h.position AS n, NULL::bigint AS v, h.hash AS a, NULL::uuid AS i, NULL::text AS t, NULL::text AS d FROM h \
             UNION ALL \
             SELECT 1, e.position, e.version, e.stream, e.event_id, e.event_type, e.data::text \
               FROM m, UNNEST(CASE WHEN m.moved THEN $1::uuid[] ELSE '{}'::uuid[] END) AS q(id) \
               CROSS JOIN LATERAL (SELECT * FROM events e WHERE e.event_id = q.id LIMIT 1) AS e \
             UNION ALL \
             SELECT 2, v.version, NULL, s.stream, NULL, NULL, NULL \
               FROM m, UNNEST(CASE WHEN m.moved THEN $2::text[] ELSE $5::text[] END) AS s(stream) \
               CROSS JOIN LATERAL (SELECT version FROM events e WHERE e.stream = s.stream ORDER BY version DESC LIMIT 1) AS v",
        )
        .bind(&ids)
        .bind(&streams)
        .bind(left_head)
        .bind(left_hash)
        .bind(&unknown)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| locked(unavailable(e)))?;
        let col = |e: sqlx::Error| locked(unavailable(e));
        for r in lookups {
            let n = r.try_get::<i64, _>(1).map_err(col)? as u64;
            match r.try_get::<i32, _>(0).map_err(col)? {
                0 => {
                    head = n;
                    head_hash = r.try_get(3).map_err(col)?;
                }
                1 => {
                    let data: String = r.try_get(6).map_err(col)?;
                    let data = serde_json::from_str(&data)
                        .map(|v| canonical_json(&v))
                        .map_err(|e| locked(StoreError::Corrupt(e.to_string())))?;
                    known.insert(
                        r.try_get(4).map_err(col)?,
                        (
                            n,
                            r.try_get::<i64, _>(2).map_err(col)? as u64,
                            r.try_get(3).map_err(col)?,
                            r.try_get(5).map_err(col)?,
                            data,
                        ),
                    );
                }
                _ => {
                    versions.insert(r.try_get(3).map_err(col)?, n);
                }
            }
        }

        // The same test as the query's `moved`, on the same snapshot.
        let unchecked = self
            .known
            .as_ref()
            .is_some_and(|k| k.head == head && k.hash == head_hash);
        if unchecked && let Some(k) = &self.known {
            for s in &streams {
                if let Some(v) = k.versions.get(s) {
                    versions.insert(s.clone(), *v);
                }
            }
        }

        // The group's rows, as they will be recorded (and then handed to [`Recent`]), sent
        // in PostgreSQL's binary COPY format as the raw limit of `bench ingest` sends them (no
        // parameter arrays to encode, nothing for the server to unpack). They go out in
        // chunks as they are staged, so that the server inserts one chunk while this task
        // hashes and encodes the next: staged first and sent after, the two took turns.
        let mut rows: Vec<Committed> = Vec::new();
        let mut outcomes = Vec::with_capacity(appends.len());
        let mut head_points = Vec::new();
        let mut batches = appends.iter();
        let copy_failed = |e: sqlx::Error| {
            let unique = e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23505");
            Failed {
                unchecked: unchecked && unique,
                ..locked(unavailable(e))
            }
        };
        // The connection, reborrowed once for the copy, which starts with the first chunk.
        let mut for_copy = Some(&mut *conn);
        let mut copy = None;
        let mut body = copy_binary::header();
        let mut encoded = 0;
        for is_append in order {
            if !is_append {
                head_points.push(Head {
                    position: head,
                    hash: head_hash.clone(),
                });
                continue;
            }
            let (batch, _) = batches.next().expect("one batch per append");
            if batch.fence.is_some_and(|f| f != failures) {
                outcomes.push(Err(StoreError::Unavailable(
                    "decided before an earlier append failed; retry".into(),
                )));
                continue;
            }
            outcomes.push(stage(
                batch,
                &mut known,
                &mut versions,
                &mut rows,
                &mut head,
                &mut head_hash,
            ));
            for c in &rows[encoded..] {
                copy_binary::row(&mut body, &c.record);
            }
            encoded = rows.len();
            if body.len() >= COPY_CHUNK_BYTES {
                copy_in(&mut for_copy, &mut copy)
                    .await
                    .map_err(copy_failed)?
                    .send(std::mem::take(&mut body))
                    .await
                    .map_err(copy_failed)?;
            }
        }

        if unchecked
            && outcomes
                .iter()
                .any(|o| matches!(o, Err(StoreError::VersionConflict { .. })))
        {
            if let Some(c) = copy {
                // The transaction is dropped with its connection; stop the copy first.
                let _ = c.abort("a version conflict to look into").await;
            }
            // A retry of a recorded batch looks like a conflict until its ids are looked up.
            return Err(Failed {
                error: unavailable("a version conflict seen without the ids looked up"),
                locked: true,
                unchecked: true,
            });
        }
        let wrote = !rows.is_empty();
        if wrote {
            copy_binary::trailer(&mut body);
            copy_in(&mut for_copy, &mut copy)
                .await
                .map_err(copy_failed)?
                .send(body)
                .await
                .map_err(copy_failed)?;
            let c = copy.take().expect("the copy has started");
            c.finish().await.map_err(copy_failed)?;
        }
        // A copy starts only with rows to send, so none is left here to finish.
        drop(copy);
        // The notification is sent at the commit, in the same message.
        let commit = if wrote {
            format!(
                "SELECT pg_notify('{}', '{head}'); COMMIT",
                self.channel.replace('\'', "''")
            )
        } else {
            "COMMIT".to_string()
        };
        if wrote {
            self.own.store(head, Ordering::SeqCst);
        }
        if let Err(e) = conn.execute(commit.as_str()).await {
            // Not known to be ours now: another process's commit may end at this head.
            self.own.store(0, Ordering::SeqCst);
            return Err(locked(unavailable(e)));
        }
        // What this group looked up or wrote; it adds to what the writer knew when nobody
        // else wrote in between, and replaces it otherwise.
        let learned = Known {
            head,
            hash: head_hash,
            versions,
        };
        let written = (outcomes, wrote.then_some(head), head_points, rows);
        Ok((written, unchecked, learned))
    }
}

/// PostgreSQL's binary `COPY` format (the writer's rows, and the raw limit of `bench ingest`): a header, per row a field count and per field its
/// length and its bytes in the type's binary send format, a trailer.
pub mod copy_binary {
    use crate::store::RecordedEvent;

    /// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01T00:00:00Z).
    const PG_EPOCH_UNIX_US: i64 = 946_684_800_000_000;
    /// The `jsonb` binary format's version byte (the text follows).
    const JSONB_VERSION: u8 = 1;

    /// Signature, flags (no OIDs), header extension length.
    pub fn header() -> Vec<u8> {
        let mut b = b"PGCOPY\n\xff\r\n\0".to_vec();
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        b
    }

    pub fn trailer(b: &mut Vec<u8>) {
        b.extend_from_slice(&(-1i16).to_be_bytes());
    }

    fn field(b: &mut Vec<u8>, bytes: &[u8]) {
        b.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        b.extend_from_slice(bytes);
    }

    /// One row of the events table's shape: int8, text, int8, uuid, text, int4,
    /// timestamptz, jsonb, text, text.
    pub fn row(b: &mut Vec<u8>, r: &RecordedEvent) {
        b.extend_from_slice(&10i16.to_be_bytes());
        field(b, &(r.position as i64).to_be_bytes());
        field(b, r.stream.as_bytes());
        field(b, &(r.version as i64).to_be_bytes());
        field(b, r.event_id.as_bytes());
        field(b, r.event_type.as_bytes());
        field(b, &(r.schema_version as i32).to_be_bytes());
        field(b, &(r.recorded_at.timestamp_micros() - PG_EPOCH_UNIX_US).to_be_bytes());
        b.extend_from_slice(&(r.data.len() as i32 + 1).to_be_bytes());
        b.push(JSONB_VERSION);
        b.extend_from_slice(r.data.as_bytes());
        field(b, r.hash.as_bytes());
        field(b, r.prev_hash.as_bytes());
    }
}

/// Checks one batch against what is recorded (and staged earlier in this group) and stages
/// its rows.
fn stage(
    batch: &AppendBatch,
    known: &mut HashMap<uuid::Uuid, (u64, u64, String, String, String)>,
    versions: &mut HashMap<String, u64>,
    rows: &mut Vec<Committed>,
    head: &mut u64,
    head_hash: &mut String,
) -> Result<Appended, StoreError> {
    let found: Vec<_> = batch.events.iter().map(|e| known.get(&e.event_id)).collect();
    if found.iter().any(Option::is_some) {
        let mut recorded = Vec::new();
        for (e, f) in batch.events.iter().zip(&found) {
            match f {
                Some((pos, ver, stream, ty, data))
                    if *stream == batch.stream && *ty == e.event_type && *data == e.data =>
                {
                    recorded.push((*pos, *ver))
                }
                _ => return Err(StoreError::DuplicateEventId(e.event_id)),
            }
        }
        return Ok(Appended {
            recorded,
            duplicate: true,
        });
    }
    let mut seen = HashSet::new();
    for e in &batch.events {
        if !seen.insert(e.event_id) {
            return Err(StoreError::DuplicateEventId(e.event_id));
        }
    }
    let actual = versions.get(&batch.stream).copied().unwrap_or(0);
    if !batch.expected.admits(actual) {
        return Err(StoreError::VersionConflict {
            stream: batch.stream.clone(),
            expected: batch.expected,
            actual,
        });
    }
    let records = super::stage(batch, actual, *head, head_hash);
    let mut recorded = Vec::with_capacity(records.len());
    for (e, record) in batch.events.iter().zip(records) {
        known.insert(
            e.event_id,
            (
                record.position,
                record.version,
                batch.stream.clone(),
                e.event_type.clone(),
                e.data.clone(),
            ),
        );
        recorded.push((record.position, record.version));
        (*head, *head_hash) = (record.position, record.hash.clone());
        rows.push(Committed {
            record,
            memo: e.memo.clone(),
        });
    }
    versions.insert(batch.stream.clone(), actual + batch.events.len() as u64);
    Ok(Appended {
        recorded,
        duplicate: false,
    })
}

#[async_trait]
impl EventStore for PgStore {
    fn append(&self, batch: AppendBatch) -> AppendTicket {
        self.queue.append(batch)
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let limit = limit.min(READ_PAGE_EVENTS_MAX) as i64;
        let rows = sqlx::query(&format!(
            "{SELECT} WHERE stream = $1 AND version >= $2 ORDER BY version LIMIT $3"
        ))
        .bind(stream)
        .bind(from_version as i64)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(row_to_event).collect()
    }

    async fn read_all(&self, after_position: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let limit = limit.min(READ_PAGE_EVENTS_MAX) as i64;
        let query = || sqlx::query(READ_ALL).bind(after_position as i64).bind(limit);
        // On a kept connection if one is free: one round trip instead of three. A kept
        // connection that fails is closed and the read is made again through the pool.
        for slot in &self.readers {
            let Ok(mut slot) = slot.try_lock() else { continue };
            let mut conn = match slot.take() {
                Some(c) => c,
                None => self.pool.acquire().await.map_err(unavailable)?,
            };
            match query().fetch_all(&mut *conn).await {
                Ok(rows) => {
                    *slot = Some(conn);
                    return rows.iter().map(row_to_event).collect();
                }
                Err(e) => {
                    discard(conn);
                    tracing::info!(error = %e, "a kept read connection failed; reading through the pool");
                    break;
                }
            }
        }
        let rows = query().fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(row_to_event).collect()
    }

    async fn head(&self) -> Result<Head, StoreError> {
        self.queue.head().await
    }

    fn recent(&self, after_position: u64, limit: usize) -> Option<Tail> {
        self.recent.after(after_position, limit)
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head_rx.clone()
    }

    async fn shutdown(&self) {
        self.queue.close();
        let handle = self.writer.lock().expect("writer lock").take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        self.listener.abort();
    }

    fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    fn shared(&self) -> bool {
        true
    }

    fn group_commit_sizes(&self) -> Option<&crate::metrics::Histogram> {
        Some(&self.group_sizes)
    }
}
