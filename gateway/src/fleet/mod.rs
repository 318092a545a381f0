//! The fleet: gateways sharing their bans through Redis, never on the request path.
//!
//! Data model (every key under `[fleet] key_prefix`):
//! - `bans`, a sorted set of targets scored by expiry (unix seconds; "until removed" is
//!   2^53): the bans in force, what a node loads at start and reconciles against;
//! - `ban`, a hash from target to the last message about it (reason, origin, node, expiry);
//! - `events`, a stream (trimmed to about [`STREAM_LEN`] entries) every node reads with
//!   `XREAD BLOCK`, without a consumer group since every node needs every event;
//! - `epoch`, a random value set by the first node to find it missing: when it changes,
//!   Redis lost its data, and each node publishes its own bans in force again.
//!
//! A change made here goes into a bounded [`Outbox`] (the request that banned does not wait),
//! and the publisher task writes all three keys at once with one Lua script. The follower
//! task loads the bans in force, then follows the stream from its last id (kept beside the
//! state file), applies each event to this node's [`DenyStore`] (whose checks make the allow
//! list and the protected addresses win), and reconciles against the sorted set now and then.
//! With Redis away both tasks retry with backoff; the node keeps banning alone meanwhile.

mod counts;
mod cursor;
mod message;
mod outbox;
mod stats;

pub use counts::Counts;
pub use message::{Codec, Event, Invalid, Message, Op};
pub use outbox::Outbox;
pub use stats::{FleetStats, LAG_BUCKETS};

use crate::abuse::{AbuseEngine, Signal};
use crate::config::fleet::{valid_node, FleetConfig};
use crate::deny::{Applied, Change, DenyError, DenyStore};
use crate::ebpf::Target;
use cursor::{Cursor, Position, StreamId};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, Script};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The stream keeps about this many events (`XADD MAXLEN ~`); a node away for longer
/// catches up from the sorted set.
pub const STREAM_LEN: u64 = 100_000;
/// How long one `XREAD` blocks.
const BLOCK: Duration = Duration::from_secs(1);
/// Events read per `XREAD`.
const READ_COUNT: usize = 512;
/// Events published per batch before the queue is looked at again.
const PUBLISH_BATCH: usize = 64;
/// Bans loaded from the sorted set at most (the kernel's deny map holds 65 536).
const MAX_LOAD: usize = 131_072;
/// How often the follower reconciles against the sorted set.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(3);
/// How often local counts are added to the fleet's.
const COUNT_EVERY: Duration = Duration::from_millis(100);
/// Distinct sources counted per interval at most.
const COUNT_SOURCES: usize = 65_536;
/// The score of a ban "until removed": exact in a double, beyond any real expiry.
const FOREVER: u64 = 1 << 53;

/// Why the fleet could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    #[error("[fleet] {key} {}: {source}", .path.display())]
    File {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("[fleet] hmac_key_file {}: the key must be at least 32 bytes", .0.display())]
    ShortKey(PathBuf),
    #[error("[fleet] node: the host name `{0}` is not a valid node name; set node")]
    Node(String),
    #[error("[fleet] redis_url: {0}")]
    Url(#[source] redis::RedisError),
}

/// The running fleet link: its counters and tasks (aborted when dropped).
pub struct Fleet {
    stats: Arc<FleetStats>,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The task counting for the abuse engine ([`Fleet::count_for`]), replaced by a reload's.
    counting: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("node", &self.stats.node)
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in self.tasks.iter().chain(&self.counting) {
            t.abort();
        }
    }
}

fn read_secret(key: &'static str, path: &Path) -> Result<Vec<u8>, FleetError> {
    std::fs::read(path).map_err(|source| FleetError::File {
        key,
        path: path.to_path_buf(),
        source,
    })
}

/// The kernel's host name (UTS namespace), as `hostname` prints it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A fresh random epoch (16 hex digits); the time when no random numbers are to be had.
fn random_epoch() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        b = now_ms().to_be_bytes();
    }
    format!("{:016x}", u64::from_be_bytes(b))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The keys of one fleet.
#[derive(Debug, Clone)]
struct Keys {
    bans: String,
    ban: String,
    events: String,
    epoch: String,
    /// Prefix of the count keys: `cnt:SIGNAL:WINDOW:SOURCE`.
    counts: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            bans: format!("{prefix}bans"),
            ban: format!("{prefix}ban"),
            events: format!("{prefix}events"),
            epoch: format!("{prefix}epoch"),
            counts: format!("{prefix}cnt:"),
        }
    }
}

/// Writes one event: sets the epoch if Redis has none (a fresh data set), drops expired
/// bans (a few per call), adds or removes the ban in the sorted set and the hash (a ban never lowers a longer one's score), appends the message
/// to the stream. One script, so the three keys never disagree.
const PUBLISH_LUA: &str = r"
local now = tonumber(ARGV[6])
redis.call('SET', KEYS[4], ARGV[7], 'NX')
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, 64)
for _, t in ipairs(old) do
  redis.call('ZREM', KEYS[1], t)
  redis.call('HDEL', KEYS[2], t)
end
if ARGV[1] == 'add' then
  local cur = redis.call('ZSCORE', KEYS[1], ARGV[2])
  if (not cur) or tonumber(ARGV[3]) >= tonumber(cur) then
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
    redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
  end
else
  redis.call('ZREM', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[2])
end
return redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'm', ARGV[4])
";

/// What both tasks share.
struct Shared {
    client: redis::Client,
    keys: Keys,
    codec: Codec,
    node: String,
    max_ttl: Duration,
    store: Arc<DenyStore>,
    stats: Arc<FleetStats>,
    outbox: Arc<Outbox>,
    cursor: Option<Cursor>,
}

impl Fleet {
    /// Reads the secrets, hooks the deny store's changes into the outbox and starts the
    /// publisher and follower tasks (on the current runtime). Redis need not be up.
    /// `cursor`: where the last stream id read is kept (beside the state file).
    pub fn start(
        cfg: &FleetConfig,
        store: Arc<DenyStore>,
        cursor: Option<PathBuf>,
    ) -> Result<Self, FleetError> {
        let mut info = cfg
            .redis_url
            .as_str()
            .into_connection_info()
            .map_err(FleetError::Url)?;
        if let Some(path) = &cfg.redis_password_file {
            let raw = read_secret("redis_password_file", path)?;
            let text = String::from_utf8_lossy(&raw);
            let pw = text.lines().next().unwrap_or("").trim().to_owned();
            let settings = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(FleetError::Url)?;
        let key = match &cfg.hmac_key_file {
            Some(path) => {
                let k = read_secret("hmac_key_file", path)?;
                if k.len() < 32 {
                    return Err(FleetError::ShortKey(path.clone()));
                }
                Some(k)
            }
            None => None,
        };
        let node = match &cfg.node {
            Some(n) => n.clone(),
            None => {
                let h = hostname();
                if !valid_node(&h) {
                    return Err(FleetError::Node(h));
                }
                h
            }
        };
        let codec = Codec::new(key.as_deref(), &cfg.key_prefix, &cfg.share);
        let outbox = Arc::new(Outbox::new(cfg.queue));
        let stats = Arc::new(FleetStats::new(
            node.clone(),
            codec.signed(),
            outbox.clone(),
        ));
        let shared = Arc::new(Shared {
            client,
            keys: Keys::new(&cfg.key_prefix),
            codec,
            node,
            max_ttl: cfg.max_ttl.0,
            store: store.clone(),
            stats: stats.clone(),
            outbox,
            cursor: cursor.map(Cursor::new),
        });
        let hook = shared.clone();
        store.set_observer(Box::new(move |change| hook.queue(change)));
        let tasks = vec![
            tokio::spawn(shared.clone().publish_forever()),
            tokio::spawn(shared.clone().follow_forever()),
        ];
        tracing::info!(node = %stats.node, signed = stats.signed, "fleet: sharing bans through Redis");
        Ok(Self {
            stats,
            shared,
            tasks,
            counting: None,
        })
    }

    /// Counts the abuse engine's events of rules with a `fleet_limit` across the fleet, and
    /// bans a source when the fleet's count crosses the limit (nothing to do without such
    /// rules). A reload's engine replaces the previous one.
    pub fn count_for(&mut self, engine: Arc<AbuseEngine>) {
        self.stop_counting();
        if !Signal::ALL.iter().any(|s| engine.fleet_rule(*s).is_some()) {
            return;
        }
        let counts = Arc::new(Counts::new(COUNT_SOURCES));
        engine.count_for_fleet(counts.clone());
        let shared = self.shared.clone();
        self.counting = Some(tokio::spawn(shared.count_forever(counts, engine)));
    }

    /// Counting for an abuse engine stops (a reload removed `[abuse]`).
    pub fn stop_counting(&mut self) {
        if let Some(t) = self.counting.take() {
            t.abort();
        }
    }

    pub fn stats(&self) -> Arc<FleetStats> {
        self.stats.clone()
    }
}

/// Doubling delays between reconnection attempts.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(BACKOFF_MIN)
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
    }

    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

impl Shared {
    /// The deny store's hook: runs on the path of the ban, so it only queues.
    fn queue(&self, change: Change) {
        let (event, automatic) = match change {
            Change::Added {
                target,
                expires_unix,
                origin,
                reason,
            } => {
                if !self.codec.shares(&origin) {
                    return;
                }
                let automatic = origin != "manual";
                (
                    Event {
                        op: Op::Add,
                        target,
                        origin,
                        reason,
                        node: self.node.clone(),
                        created_ms: now_ms(),
                        expires_unix,
                    },
                    automatic,
                )
            }
            // A removal is an operator's act: it travels as `manual` does.
            Change::Removed { target } if self.codec.shares("manual") => (
                Event {
                    op: Op::Del,
                    target,
                    origin: "manual".to_owned(),
                    reason: String::new(),
                    node: self.node.clone(),
                    created_ms: now_ms(),
                    expires_unix: 0,
                },
                false,
            ),
            Change::Removed { .. } => return,
        };
        self.outbox.push(event, automatic);
    }

    async fn connect(
        &self,
        response_timeout: Duration,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(response_timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Publishes queued events for ever, reconnecting with backoff.
    async fn publish_forever(self: Arc<Self>) {
        let script = Script::new(PUBLISH_LUA);
        let mut backoff = Backoff::new();
        let mut con = None;
        loop {
            if self.outbox.is_empty() {
                self.outbox.wait().await;
                continue;
            }
            let c = match con.as_mut() {
                Some(c) => c,
                None => match self.connect(TIMEOUT).await {
                    Ok(c) => con.insert(c),
                    Err(e) => {
                        tracing::debug!(error = %e, "fleet: publisher cannot connect");
                        self.stats.set_connected(false);
                        backoff.wait().await;
                        continue;
                    }
                },
            };
            match self.publish_batch(&script, c).await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    tracing::debug!(error = %e, "fleet: publishing failed; kept queued");
                    self.stats.set_connected(false);
                    con = None;
                    backoff.wait().await;
                }
            }
        }
    }

    async fn publish_batch(
        &self,
        script: &Script,
        con: &mut MultiplexedConnection,
    ) -> redis::RedisResult<()> {
        let (batch, last) = self.outbox.peek(PUBLISH_BATCH);
        for event in &batch {
            let score = match event.expires_unix {
                0 => FOREVER,
                t => t.min(FOREVER),
            };
            let _: String = script
                .key(&self.keys.bans)
                .key(&self.keys.ban)
                .key(&self.keys.events)
                .key(&self.keys.epoch)
                .arg(match event.op {
                    Op::Add => "add",
                    Op::Del => "del",
                })
                .arg(event.target.to_string())
                .arg(score)
                .arg(self.codec.encode(event))
                .arg(STREAM_LEN)
                .arg(now_ms() / 1000)
                .arg(random_epoch())
                .invoke_async(con)
                .await?;
            self.stats
                .sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(seq) = last {
            self.outbox.ack(seq);
        }
        Ok(())
    }

    /// Every [`COUNT_EVERY`], adds the counts gathered here to the fleet's (`INCRBY` and
    /// `EXPIRE` on one key per source, signal and fixed window, pipelined) and bans the
    /// sources whose fleet-wide count crossed their rule's `fleet_limit`. Counts that cannot
    /// reach Redis are lost (counted): the local limits still hold.
    async fn count_forever(self: Arc<Self>, counts: Arc<Counts>, engine: Arc<AbuseEngine>) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut tick = tokio::time::interval(COUNT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut con: Option<MultiplexedConnection> = None;
        loop {
            tick.tick().await;
            let batch = counts.take();
            if batch.is_empty() {
                continue;
            }
            if con.is_none() {
                con = self.connect(TIMEOUT).await.ok();
            }
            let Some(c) = con.as_mut() else {
                self.stats
                    .counts_lost
                    .fetch_add(batch.len() as u64, Relaxed);
                continue;
            };
            let now = now_ms();
            let mut pipe = redis::pipe();
            let mut asked = Vec::with_capacity(batch.len());
            for (key, signal, n) in batch {
                let Some((window_ms, limit)) = engine.fleet_rule(signal) else {
                    continue;
                };
                let window = now / window_ms.max(1);
                let k = format!("{}{}:{window}:{key}", self.keys.counts, signal.name());
                pipe.cmd("INCRBY").arg(&k).arg(n);
                pipe.cmd("EXPIRE")
                    .arg(&k)
                    .arg(window_ms.div_ceil(1000) * 2 + 1)
                    .ignore();
                asked.push((key, signal, limit));
            }
            match pipe.query_async::<Vec<u64>>(c).await {
                Ok(totals) => {
                    for ((key, signal, limit), total) in asked.iter().zip(totals) {
                        if total > u64::from(*limit) {
                            let total = u32::try_from(total).unwrap_or(u32::MAX);
                            engine.fleet_crossed(*key, *signal, total);
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "fleet: counts not added");
                    self.stats
                        .counts_lost
                        .fetch_add(asked.len() as u64, Relaxed);
                    con = None;
                }
            }
        }
    }

    /// Follows the fleet for ever: catch up, then the stream, again after any failure. Where
    /// it was is kept across reconnections (and in the cursor file across restarts).
    async fn follow_forever(self: Arc<Self>) {
        let mut backoff = Backoff::new();
        let mut at = self.cursor.as_ref().and_then(Cursor::load);
        loop {
            if let Err(e) = self.follow(&mut at).await {
                tracing::debug!(error = %e, "fleet: follower lost Redis");
                self.stats.set_connected(false);
            }
            backoff.wait().await;
            if self.stats.connected() {
                backoff.reset();
            }
        }
    }

    /// Redis's epoch: a random value set once per Redis data set (by whichever node comes
    /// first, follower or publisher); another value than before means the data was lost.
    async fn epoch(&self, con: &mut MultiplexedConnection) -> redis::RedisResult<String> {
        let _: Option<String> = redis::cmd("SET")
            .arg(&self.keys.epoch)
            .arg(random_epoch())
            .arg("NX")
            .query_async(con)
            .await?;
        let e: Option<String> = redis::cmd("GET")
            .arg(&self.keys.epoch)
            .query_async(con)
            .await?;
        Ok(e.unwrap_or_default())
    }

    /// One connection's life: note the stream's end, load the bans in force, read the
    /// stream from where this node was (or the noted end if that id is gone), reconcile
    /// now and then.
    async fn follow(&self, at: &mut Option<Position>) -> redis::RedisResult<()> {
        let mut con = self.connect(BLOCK + TIMEOUT).await?;
        let epoch = self.epoch(&mut con).await?;
        let noted = self.stream_end(&mut con).await?;
        let in_force = self.reconcile(&mut con).await?;
        let first = self.stream_first(&mut con).await?;
        let mut id = match at.as_ref() {
            // The same Redis, and the id still in its stream (not trimmed).
            Some(p)
                if p.epoch == epoch
                    && first.is_some_and(|f| p.id >= f.before())
                    && p.id <= noted =>
            {
                p.id
            }
            _ => noted,
        };
        if at.as_ref().is_some_and(|p| p.epoch != epoch) {
            // Redis lost its data (a restart without persistence, a failover to an empty
            // replica): each node puts back its own bans in force.
            self.republish_own(&in_force);
        }
        let mut here = Position {
            id,
            epoch: epoch.clone(),
        };
        self.save_position(at, &here);
        self.stats.set_connected(true);
        let mut reconciled = Instant::now();
        loop {
            let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(1000))
                .arg("STREAMS")
                .arg(&self.keys.events)
                .arg(id.to_string())
                .query_async(&mut con)
                .await?;
            for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                if let Some(next) = StreamId::parse(&entry.id) {
                    id = id.max(next);
                }
                let raw = match entry.map.get("m") {
                    Some(redis::Value::BulkString(b)) => b.as_slice(),
                    _ => {
                        self.stats.reject(Invalid::Malformed);
                        continue;
                    }
                };
                self.apply(raw, true);
            }
            if id != here.id {
                here.id = id;
                self.save_position(at, &here);
            }
            if reconciled.elapsed() >= RECONCILE_EVERY {
                self.reconcile(&mut con).await?;
                reconciled = Instant::now();
            }
        }
    }

    fn save_position(&self, at: &mut Option<Position>, here: &Position) {
        if at.as_ref() != Some(here) {
            if let Some(c) = &self.cursor {
                c.save(here);
            }
            *at = Some(here.clone());
        }
    }

    /// The id of the stream's last entry (`0-0` when empty).
    async fn stream_end(&self, con: &mut MultiplexedConnection) -> redis::RedisResult<StreamId> {
        let r: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.keys.events)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(con)
            .await?;
        Ok(r.ids
            .first()
            .and_then(|e| StreamId::parse(&e.id))
            .unwrap_or_default())
    }

    /// The id of the stream's first entry, if any.
    async fn stream_first(
        &self,
        con: &mut MultiplexedConnection,
    ) -> redis::RedisResult<Option<StreamId>> {
        let r: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.keys.events)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(con)
            .await?;
        Ok(r.ids.first().and_then(|e| StreamId::parse(&e.id)))
    }

    /// Queues this node's own bans in force that Redis lacks.
    fn republish_own(&self, in_force: &HashSet<Target>) {
        let rows = match self.store.list() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "fleet: own bans not listed; not republished");
                return;
            }
        };
        let now = now_ms() / 1000;
        let mut queued = 0;
        for row in rows {
            if row.node.is_some() || row.expired || !self.codec.shares(&row.origin) {
                continue;
            }
            let Ok(target) = row.target.parse::<Target>() else {
                continue;
            };
            if in_force.contains(&target) {
                continue;
            }
            let automatic = row.origin != "manual";
            self.outbox.push(
                Event {
                    op: Op::Add,
                    target,
                    origin: row.origin,
                    reason: row.reason,
                    node: self.node.clone(),
                    created_ms: now_ms(),
                    expires_unix: row.expires_in_secs.map_or(0, |s| now + s.max(1)),
                },
                automatic,
            );
            queued += 1;
        }
        tracing::warn!(
            republished = queued,
            "fleet: Redis lost its data; own bans put back"
        );
    }

    /// Applies every ban in force in the sorted set, and lifts the bans received from the
    /// fleet that are no longer there (a removal missed while away, a failover). Returns
    /// the targets in force there.
    async fn reconcile(
        &self,
        con: &mut MultiplexedConnection,
    ) -> redis::RedisResult<HashSet<Target>> {
        let now = now_ms() / 1000;
        let members: Vec<Vec<u8>> = redis::cmd("ZRANGEBYSCORE")
            .arg(&self.keys.bans)
            .arg(format!("({now}"))
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(MAX_LOAD)
            .query_async(con)
            .await?;
        let mut in_force = HashSet::new();
        for chunk in members.chunks(1024) {
            let msgs: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                .arg(&self.keys.ban)
                .arg(chunk)
                .query_async(con)
                .await?;
            for raw in msgs.iter().flatten() {
                if let Some(t) = self.apply(raw, false) {
                    in_force.insert(t);
                }
            }
        }
        for t in self.store.from_fleet() {
            if !in_force.contains(&t) {
                match self.store.remove_remote(&t) {
                    Ok(true) => {
                        tracing::info!(target_addr = %t, "fleet: ban no longer in Redis; lifted")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(target_addr = %t, error = %e, "fleet: lifting failed"),
                }
            }
        }
        Ok(in_force)
    }

    /// Checks and applies one message; `live` ones (from the stream) feed the lag
    /// histogram. Returns the target of a valid add that is in force (own ones included).
    fn apply(&self, raw: &[u8], live: bool) -> Option<Target> {
        use std::sync::atomic::Ordering::Relaxed;
        let event = match self.codec.decode(raw) {
            Ok(e) => e,
            Err(why) => {
                self.stats.reject(why);
                tracing::debug!(reason = %why, "fleet: message refused");
                return None;
            }
        };
        self.stats.received.fetch_add(1, Relaxed);
        if event.node == self.node {
            return (event.op == Op::Add).then_some(event.target);
        }
        let result = match event.op {
            Op::Add => {
                let cap = now_ms() / 1000 + self.max_ttl.as_secs();
                let expires = match event.expires_unix {
                    0 => cap,
                    t => t.min(cap),
                };
                self.store
                    .apply_remote(
                        event.target,
                        expires,
                        &event.origin,
                        &event.reason,
                        &event.node,
                    )
                    .map(|a| a == Applied::New)
            }
            Op::Del => self.store.remove_remote(&event.target),
        };
        match result {
            Ok(changed) => {
                if changed && live {
                    let lag = now_ms().saturating_sub(event.created_ms);
                    self.stats.observe_lag(Duration::from_millis(lag));
                }
                if changed {
                    tracing::info!(target_addr = %event.target, node = %event.node, op = ?event.op, "fleet: applied");
                }
            }
            Err(
                e @ (DenyError::Protected { .. } | DenyError::Allowed(_) | DenyError::TooBroad(_)),
            ) => {
                self.stats.refused.fetch_add(1, Relaxed);
                tracing::warn!(target_addr = %event.target, node = %event.node, error = %e, "fleet: ban refused here");
                return None;
            }
            Err(e) => {
                tracing::warn!(target_addr = %event.target, error = %e, "fleet: event not applied");
            }
        }
        (event.op == Op::Add).then_some(event.target)
    }
}
