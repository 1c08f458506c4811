//! The Lua scripts that make a room's writes atomic in Redis. Each touches
//! the keys of one room only (one hash tag, one slot), so it runs on the
//! node that owns the room in a Redis Cluster. Redis runs a script alone:
//! nothing interleaves between the dedup check, the numbering, the append
//! and the publish, so two nodes never hand out one number and the live
//! channel carries a room's batches in sequence order.
//!
//! Scripts are sent by hash (`EVALSHA`); after `NOSCRIPT` (a restarted
//! Redis, a new node) they are loaded on every primary and sent again.

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};

/// Appends one room's messages: dedup check → next sequence → `XADD` →
/// one publish of every new message on the room's live channel.
///
/// KEYS: log, meta, ids, channel. ARGV: proposed epoch, dedup window,
/// retained messages, `1` for sharded pub/sub, then per message: dedup key
/// (`user \0 id`, empty without an id), timestamp, message JSON.
/// Returns `{epoch, first, seq1, dup1, seq2, dup2, …}`: the room's stored
/// epoch, 1 if this batch gave the room its first message, and per message
/// its sequence and whether it repeated a stored id (then nothing was
/// stored and the sequence is the original's).
pub const APPEND: &str = r#"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
local stored = redis.call('HGET', KEYS[2], 'seq')
local seq = tonumber(stored or '0')
local window = tonumber(ARGV[2])
local out = {epoch, 0}
local live = {}
for i = 5, #ARGV, 3 do
  local key = ARGV[i]
  local original = nil
  if key ~= '' then
    original = redis.call('ZSCORE', KEYS[3], key)
  end
  if original then
    out[#out + 1] = tonumber(original)
    out[#out + 1] = 1
  else
    seq = seq + 1
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], seq .. '-0', 't', ARGV[i + 1], 'm', ARGV[i + 2])
    if key ~= '' and window > 0 then
      redis.call('ZADD', KEYS[3], seq, key)
    end
    out[#out + 1] = seq
    out[#out + 1] = 0
    live[#live + 1] = seq .. ' ' .. ARGV[i + 2]
  end
end
if #live > 0 then
  redis.call('HSET', KEYS[2], 'seq', seq)
  if not stored then
    redis.call('PERSIST', KEYS[2])
    out[2] = 1
  end
  local n = redis.call('ZCARD', KEYS[3])
  if n > window then
    redis.call('ZREMRANGEBYRANK', KEYS[3], 0, n - window - 1)
  end
  local payload = 'm\n' .. epoch .. '\n' .. table.concat(live, '\n')
  if ARGV[4] == '1' then
    redis.call('SPUBLISH', KEYS[4], payload)
  else
    redis.call('PUBLISH', KEYS[4], payload)
  end
end
return out
"#;

/// Reads what a node needs to take over a room, claiming an epoch for a
/// room that has none yet, so that every node that loads an empty room
/// announces the same epoch. An epoch claimed for a room that never gets a
/// message expires after ARGV[2] ms (the first message keeps it for good),
/// so joins alone never leave keys behind.
///
/// KEYS: meta, presence. ARGV: proposed epoch, claim lifetime (ms).
/// Returns `{epoch, seq, presence field, value, …}`.
pub const LOAD: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local seq = redis.call('HGET', KEYS[1], 'seq')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
if not seq then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local out = {epoch, tonumber(seq or '0')}
local presence = redis.call('HGETALL', KEYS[2])
for i = 1, #presence do
  out[#out + 1] = presence[i]
end
return out
"#;

/// One node's users in a room changed: records them under the node's
/// version and publishes the change on the room's live channel.
///
/// KEYS: presence, channel. ARGV: node, version, `1` for sharded pub/sub,
/// then `+user` / `-user` per change.
pub const PRESENCE: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for i = 4, #ARGV do
  local field = ARGV[1] .. '\n' .. string.sub(ARGV[i], 2)
  if string.sub(ARGV[i], 1, 1) == '+' then
    redis.call('HSET', KEYS[1], field, '1')
  else
    redis.call('HDEL', KEYS[1], field)
  end
end
local payload = 'p\n' .. ARGV[1] .. '\n' .. ARGV[2]
if #ARGV >= 4 then
  payload = payload .. '\n' .. table.concat(ARGV, '\n', 4)
end
if ARGV[3] == '1' then
  redis.call('SPUBLISH', KEYS[2], payload)
else
  redis.call('PUBLISH', KEYS[2], payload)
end
return 1
"#;

/// Forgets dead nodes' users in a room (no publish: every node learns of a
/// death from the node set itself).
///
/// KEYS: presence. ARGV: dead node ids.
pub const FORGET_NODES: &str = r#"
local fields = redis.call('HKEYS', KEYS[1])
local n = 0
for _, f in ipairs(fields) do
  for i = 1, #ARGV do
    if f == ARGV[i] or string.sub(f, 1, #ARGV[i] + 1) == ARGV[i] .. '\n' then
      redis.call('HDEL', KEYS[1], f)
      n = n + 1
      break
    end
  end
end
return n
"#;

/// This node is alive until ARGV[2] ms from now (Redis's clock, so nodes'
/// clocks do not matter); the nodes whose time is up are removed.
/// ARGV[3] = `1`: this node is leaving, remove it instead.
///
/// KEYS: the node set. ARGV: node, lifetime (ms), leaving.
/// Returns `{dead, live, added}`: the nodes removed now, the nodes alive,
/// and 1 if this node was not in the set (new, or taken for dead).
pub const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = 0
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  local was = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not was or tonumber(was) <= now then added = 1 end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #dead > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
return {dead, live, added}
"#;

/// Deletes a room whose newest message is older than ARGV[1] (ms); a later
/// message starts a new log with a new epoch. Returns 1 if deleted.
///
/// KEYS: log, meta, ids, read markers.
pub const DROP: &str = r#"
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  local f = last[1][2]
  for i = 1, #f, 2 do
    if f[i] == 't' and tonumber(f[i + 1]) >= tonumber(ARGV[1]) then
      return 0
    end
  end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return 1
"#;

/// Raises users' read markers in a room, never lowering one (nodes may
/// hand in markers out of order).
///
/// KEYS: the room's read markers. ARGV: user, sequence, user, sequence, …
pub const MARK_READ: &str = r#"
for i = 1, #ARGV, 2 do
  local was = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > was then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 0
"#;

/// Deletes a room's messages older than ARGV[1] (ms), oldest first, at
/// most ARGV[2]; the newest message always stays (it carries the room's
/// last sequence). Returns how many were deleted.
///
/// KEYS: log.
pub const TRIM_AGE: &str = r#"
local cutoff, max = tonumber(ARGV[1]), tonumber(ARGV[2])
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then return 0 end
local lastid = last[1][1]
local from, n, keep = '-', 0, nil
while not keep do
  local chunk = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', 100)
  if #chunk == 0 then break end
  for _, e in ipairs(chunk) do
    local t = 0
    for i = 1, #e[2], 2 do
      if e[2][i] == 't' then t = tonumber(e[2][i + 1]) end
    end
    if e[1] == lastid or t >= cutoff or n >= max then
      keep = e[1]
      break
    end
    n = n + 1
  end
  if not keep then from = '(' .. chunk[#chunk][1] end
end
if n > 0 and keep then
  redis.call('XTRIM', KEYS[1], 'MINID', keep)
end
return n
"#;

/// A script and its hash.
pub struct Script {
    source: &'static str,
    hash: String,
}

impl Script {
    pub fn new(source: &'static str) -> Script {
        Script {
            source,
            hash: fred::util::sha1_hash(source),
        }
    }

    /// `EVALSHA` (routed by the first key), loading the script on every
    /// primary after `NOSCRIPT`. With `options`, the call carries them
    /// (fail fast while Redis is away).
    pub async fn call<R: FromValue>(
        &self,
        client: &Client,
        options: Option<&Options>,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<R, Error> {
        let mut all: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
        all.push(self.hash.as_str().into());
        all.push((keys.len() as i64).into());
        all.extend(keys.into_iter().map(Value::from));
        all.extend(args);
        let send = |all: Vec<Value>| {
            let cmd = CustomCommand::new_static("EVALSHA", ClusterHash::Offset(2), false);
            async move {
                match options {
                    Some(o) => client.with_options(o).custom::<R, Value>(cmd, all).await,
                    None => client.custom::<R, Value>(cmd, all).await,
                }
            }
        };
        match send(all.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                client.script_load_cluster::<(), _>(self.source).await?;
                send(all).await
            }
            result => result,
        }
    }
}

/// Every script, hashed once.
pub struct Scripts {
    pub append: Script,
    pub load: Script,
    pub presence: Script,
    pub forget_nodes: Script,
    pub heartbeat: Script,
    pub drop: Script,
    pub mark_read: Script,
    pub trim_age: Script,
}

impl Default for Scripts {
    fn default() -> Scripts {
        Scripts {
            append: Script::new(APPEND),
            load: Script::new(LOAD),
            presence: Script::new(PRESENCE),
            forget_nodes: Script::new(FORGET_NODES),
            heartbeat: Script::new(HEARTBEAT),
            drop: Script::new(DROP),
            mark_read: Script::new(MARK_READ),
            trim_age: Script::new(TRIM_AGE),
        }
    }
}
