//! The Lua scripts of the Redis Streams work queue.
//!
//! Every step that reads a group's state and then changes it runs as one
//! script, so two processes sharing a queue never act on figures the other
//! has just changed (the `max_size` check and the `XADD`, the ownership
//! check and the `XACK`, the due-retry scan and the `XCLAIM`).
//!
//! Redis answers a missing value inside a script with `false`, which the
//! helpers below treat like a missing field.

/// Helpers shared by every script.
const COMMON: &str = r#"
local function field(list, name)
  for i = 1, #list, 2 do
    if list[i] == name then return list[i + 1] end
  end
  return false
end

local function id_parts(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

local function id_less(a, b)
  local am, as = id_parts(a)
  local bm, bs = id_parts(b)
  return am < bm or (am == bm and as < bs)
end

local function id_after(id)
  local dash = string.find(id, '-', 1, true)
  return string.sub(id, 1, dash) .. string.format('%d', tonumber(string.sub(id, dash + 1)) + 1)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Creates a group, giving Redis its exact read counter so that XINFO
-- GROUPS can report the group's lag (without it, a group made at '$'
-- reports no lag at all).
local function create_group(stream, group, from_start)
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM', 'ENTRIESREAD', 0)
    return
  end
  local info = redis.call('XINFO', 'STREAM', stream)
  local added = field(info, 'entries-added')
  if from_start then
    redis.call('XGROUP', 'CREATE', stream, group, '0', 'ENTRIESREAD', added - field(info, 'length'))
  else
    redis.call('XGROUP', 'CREATE', stream, group, '$', 'ENTRIESREAD', added)
  end
end

local function group_info(stream, group)
  if redis.call('EXISTS', stream) == 0 then return false end
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    if field(info, 'name') == group then return info end
  end
  return false
end

-- Entries never handed to the group, and entries handed out and not acked.
-- Redis knows the first as the group's lag unless entries were deleted
-- with XDEL after the group's position; they are counted then, up to cap.
local function held(stream, info, cap)
  local lag = field(info, 'lag')
  if not lag then
    -- Formatted as an integer: Redis reads a large Lua number written as a
    -- float (1e+15) as no count at all.
    local count = string.format('%d', cap)
    lag = #redis.call('XRANGE', stream, '(' .. field(info, 'last-delivered-id'), '+', 'COUNT', count)
  end
  return lag, field(info, 'pending')
end

-- Removes the entries every group is done with: those before the oldest
-- unacked entry of every group and not after any group's position. Also
-- deletes the consumers that hold nothing and were idle `idle_ms` or more
-- (never `parked`, the holder of delayed retries), so consumer names used
-- once do not pile up.
local function trim(stream, idle_ms, parked)
  if redis.call('EXISTS', stream) == 0 then return end
  local keep = false
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local group = field(info, 'name')
    if field(info, 'consumers') > 0 then
      for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
        local name = field(consumer, 'name')
        if name ~= parked and field(consumer, 'pending') == 0 and field(consumer, 'idle') >= idle_ms then
          redis.call('XGROUP', 'DELCONSUMER', stream, group, name)
        end
      end
    end
    local bound
    if field(info, 'pending') > 0 then
      bound = redis.call('XPENDING', stream, field(info, 'name'))[2]
    else
      bound = id_after(field(info, 'last-delivered-id'))
    end
    if not keep or id_less(bound, keep) then keep = bound end
  end
  if keep then redis.call('XTRIM', stream, 'MINID', keep) end
end

-- The delivery of `id` to the group, as {consumer, delivery count}, or false.
local function owner(stream, group, id)
  local ok, entries = pcall(redis.call, 'XPENDING', stream, group, id, id, 1)
  if not ok or not entries[1] then return false end
  return entries[1]
end
"#;

/// Creates a group if it does not exist.
///
/// KEYS: stream. ARGV: group, from_start (`1` or `0`).
const CREATE_GROUP: &str = r#"
local stream, group = KEYS[1], ARGV[1]
if not group_info(stream, group) then
  create_group(stream, group, ARGV[2] == '1')
end
return 1
"#;

/// Stores jobs after creating the declared groups, as many as every group
/// has room for.
///
/// KEYS: stream. ARGV: max_size, number of declared groups, the groups,
/// then one encoded message per job. Returns {jobs stored, fullest group};
/// when the stream has no group at all, nothing is stored (no group would
/// ever see the jobs) and every job counts as accepted.
const ENQUEUE: &str = r#"
local stream = KEYS[1]
local max = tonumber(ARGV[1])
local declared = tonumber(ARGV[2])
local groups = {}
if redis.call('EXISTS', stream) == 1 then groups = redis.call('XINFO', 'GROUPS', stream) end
local present = {}
for _, info in ipairs(groups) do present[field(info, 'name')] = true end
local created = false
for i = 1, declared do
  local group = ARGV[2 + i]
  if not present[group] then
    create_group(stream, group, true)
    present[group] = true
    created = true
  end
end
if created then groups = redis.call('XINFO', 'GROUPS', stream) end
local room, fullest = false, ''
for _, info in ipairs(groups) do
  local lag, pending = held(stream, info, max + 1)
  local left = max - lag - pending
  if not room or left < room then
    room = left
    fullest = field(info, 'name')
  end
end
local first = 3 + declared
local jobs = #ARGV - first + 1
-- Like a topic without groups in memory: no group would ever see the job.
if not room then return {jobs, ''} end
local stored = math.max(0, math.min(room, jobs))
for i = 0, stored - 1 do
  redis.call('XADD', stream, '*', 'message', ARGV[first + i])
end
return {stored, fullest}
"#;

/// Hands a batch to one consumer: due retries first, then deliveries whose
/// visibility timeout passed, then jobs never delivered to the group.
///
/// KEYS: stream, delayed set of the group. ARGV: group, consumer, count,
/// from_start, min idle in ms (negative: skip expired deliveries), claim
/// cursor, name of the consumer that holds delayed retries.
/// Returns {{{id, fields, delivery count}...}, next cursor, ms until the
/// next delayed retry is due or -1}.
const RECEIVE: &str = r#"
local stream, delayed = KEYS[1], KEYS[2]
local group, consumer = ARGV[1], ARGV[2]
local count = tonumber(ARGV[3])
local min_idle = tonumber(ARGV[5])
local cursor = ARGV[6]
local parked = ARGV[7]
if not pcall(redis.call, 'XGROUP', 'CREATECONSUMER', stream, group, consumer) then
  create_group(stream, group, ARGV[4] == '1')
end
local out = {}
local now = now_ms()
for _, id in ipairs(redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, count)) do
  redis.call('ZREM', delayed, id)
  local claimed = redis.call('XCLAIM', stream, group, consumer, 0, id)
  if claimed[1] then
    local delivery = owner(stream, group, id)
    out[#out + 1] = {claimed[1][1], claimed[1][2], delivery[4]}
  end
end
if min_idle >= 0 and #out < count then
  local claimed = redis.call('XAUTOCLAIM', stream, group, consumer, min_idle, cursor, 'COUNT', count - #out)
  cursor = claimed[1]
  for _, entry in ipairs(claimed[2]) do
    local id = entry[1]
    local delivery = owner(stream, group, id)
    if redis.call('ZSCORE', delayed, id) then
      -- A retry delayed beyond the visibility timeout: not due yet.
      redis.call('XCLAIM', stream, group, parked, 0, id, 'RETRYCOUNT', delivery[4] - 1, 'JUSTID')
    else
      out[#out + 1] = {id, entry[2], delivery[4]}
    end
  end
  for _, id in ipairs(claimed[3]) do redis.call('ZREM', delayed, id) end
end
if #out < count then
  local read = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count - #out, 'STREAMS', stream, '>')
  if read then
    for _, entry in ipairs(read[1][2]) do out[#out + 1] = {entry[1], entry[2], 1} end
  end
end
local next_due = -1
local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
if first[2] then next_due = math.max(0, tonumber(first[2]) - now) end
return {out, cursor, next_due}
"#;

/// Acks deliveries still owned as the receipts say, then trims if asked.
///
/// KEYS: stream. ARGV: group, trim (`1` or `0`), idle time in ms after
/// which a consumer holding nothing is deleted, name of the consumer that
/// holds delayed retries, then (id, consumer, delivery count) per delivery;
/// a count of 0 acks without the ownership check. Returns 1 per delivery
/// acked, 0 per delivery that had expired.
const ACK: &str = r#"
local stream, group = KEYS[1], ARGV[1]
local done = {}
for i = 5, #ARGV, 3 do
  local id, consumer, count = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local delivery = owner(stream, group, id)
  if delivery and (count == 0 or (delivery[2] == consumer and delivery[4] == count)) then
    redis.call('XACK', stream, group, id)
    done[#done + 1] = 1
  else
    done[#done + 1] = 0
  end
end
if ARGV[2] == '1' then trim(stream, tonumber(ARGV[3]), ARGV[4]) end
return done
"#;

/// Parks a delivery still owned as the receipt says until it is due again.
///
/// KEYS: stream, delayed set of the group. ARGV: group, consumer, id,
/// delivery count, delay in ms, name of the consumer that holds delayed
/// retries. Returns 1, or 0 when the delivery had expired or its entry was
/// deleted.
const RETRY: &str = r#"
local stream, delayed = KEYS[1], KEYS[2]
local group, consumer, id = ARGV[1], ARGV[2], ARGV[3]
local delivery = owner(stream, group, id)
if not delivery or delivery[2] ~= consumer or delivery[4] ~= tonumber(ARGV[4]) then return 0 end
-- An entry deleted while in flight is dropped from the group by the claim
-- and claimed by nobody: it is gone, not delayed.
if not redis.call('XCLAIM', stream, group, ARGV[6], 0, id, 'JUSTID')[1] then return 0 end
-- Due one millisecond late rather than early: TIME is read in whole ms.
redis.call('ZADD', delayed, now_ms() + tonumber(ARGV[5]) + 1, id)
return 1
"#;

/// Gives deliveries taken for a consumer and never handed out back to the
/// group, due at once: each is parked like a retry whose delay has passed,
/// with the delivery count it had before it was taken, so the next receive
/// of any consumer claims it with the same attempt. A delivery no longer
/// owned as expected (expired and taken again) is left alone.
///
/// KEYS: stream, delayed set of the group. ARGV: group, consumer, name of
/// the consumer that holds delayed retries, then (id, delivery count) per
/// delivery. Returns how many were given back.
const GIVE_BACK: &str = r#"
local stream, delayed = KEYS[1], KEYS[2]
local group, consumer, parked = ARGV[1], ARGV[2], ARGV[3]
local now = now_ms()
local given = 0
for i = 4, #ARGV, 2 do
  local id, count = ARGV[i], tonumber(ARGV[i + 1])
  local delivery = owner(stream, group, id)
  if delivery and delivery[2] == consumer and delivery[4] == count then
    if redis.call('XCLAIM', stream, group, parked, 0, id, 'RETRYCOUNT', count - 1, 'JUSTID')[1] then
      redis.call('ZADD', delayed, now, id)
      given = given + 1
    end
  end
end
return given
"#;

/// Figures of one group.
///
/// KEYS: stream, delayed set of the group. ARGV: group, counting cap.
/// Returns {pending, in flight}.
const STATS: &str = r#"
local stream, delayed = KEYS[1], KEYS[2]
local info = group_info(stream, ARGV[1])
if not info then return {0, 0} end
local lag, pending = held(stream, info, tonumber(ARGV[2]))
local parked = redis.call('ZCARD', delayed)
return {lag + parked, math.max(0, pending - parked)}
"#;

/// One script: its source and the name used in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Script {
    CreateGroup,
    Enqueue,
    Receive,
    Ack,
    Retry,
    Stats,
    GiveBack,
}

impl Script {
    /// Every script, in the order their SHA1 digests are kept.
    pub(super) const ALL: [Script; 7] = [
        Script::CreateGroup,
        Script::Enqueue,
        Script::Receive,
        Script::Ack,
        Script::Retry,
        Script::Stats,
        Script::GiveBack,
    ];

    /// Position in [`Script::ALL`].
    pub(super) fn index(self) -> usize {
        self as usize
    }

    /// The full source, helpers included.
    pub(super) fn source(self) -> String {
        let body = match self {
            Script::CreateGroup => CREATE_GROUP,
            Script::Enqueue => ENQUEUE,
            Script::Receive => RECEIVE,
            Script::Ack => ACK,
            Script::Retry => RETRY,
            Script::Stats => STATS,
            Script::GiveBack => GIVE_BACK,
        };
        format!("{COMMON}{body}")
    }
}
