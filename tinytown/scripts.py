"""The Lua that makes every multi-key step of a town atomic.

One script, loaded once (EVALSHA), dispatching on ``ARGV[1]``:

``send``      enqueue one message, or a copy for every live agent (``to = "all"``)
``receive``   supersede the agent's older waiting receive, acknowledge the batch this
              session's client saw and put back the ones it did not, redeliver overdue
              in-flight messages, then pop up to N ids (highest priority first, FIFO inside
              one; message bodies up to a byte cap, at least one message) into the caller's
              in-flight set, tagged with the receive's batch id; an assignment it delivers
              marks the task ``running``.  Returns ``{counts, records, ids}``: the caller's
              inbox counts come with the batch; each record is the stored JSON (without
              its id, which is in ``ids`` at the same place)
``requeue_batch`` put one batch's unacknowledged messages back (its client never saw it)
``touch``     ``last_seen`` = now, a sign of life
``ack``       acknowledge in-flight messages by id
``requeue``   put every in-flight message of an agent back at the front of its inbox
``counts``    the lengths of an agent's four inbox lists and of its in-flight set
``claim``     take the oldest (or a given) backlog task for an agent
``apply``     a guarded plan computed in Python: compare-and-set guards, inbox limits, then
              hash/zset writes, messages and events — all or nothing; a plan that finishes
              tasks records when, and sweeps what has outlived the retention
``sweep``     expire finished tasks older than the retention (a bounded batch), trim events

Retention (``[retention]``, :mod:`tinytown.retention`): an acknowledged message gets an
EXPIRE; a finished task is recorded in ``retention:finished`` by the time it finished, and a
bounded sweep (in the plan that finishes a task, on every heartbeat) deletes the records,
index entries and threads of tasks finished longer ago than the retention — except a task
an unfinished task depends on (in its ``dependents`` field).  A task notice (``task_done``
and the like, to the creator) never fails its plan: when the inbox is full, the oldest
queued notice is dropped to make room (none queued: the new notice is dropped).

Every check runs before the first write, so an error leaves nothing half-written.  Errors
are replies of the form ``"<code>: <sentence>"`` (see :mod:`tinytown.errors`).

Every call passes ``ARGV[3]``, a deadline on Redis's clock (ms; 0 = none): a script Redis runs
after its caller gave up on it (Redis was stalled, or the reply was lost) returns
``unavailable`` and changes nothing.  Every timestamp a script writes or compares comes
from Redis ``TIME``, never from a client's clock.

``KEYS[1]`` is the town's ``seq`` key; every other key is derived from the prefix in
``ARGV[2]`` and carries the same ``{town}`` hash tag, so all of them live in KEYS[1]'s slot.
"""

from __future__ import annotations

TOWN_LUA = r"""
local OP = ARGV[1]
local P = ARGV[2]
-- Time is Redis's own clock, never a client's: liveness, staleness and redelivery compare
-- timestamps that different machines wrote.  Redis 6.2 replicates a script that read TIME
-- by its effects only when asked to (7.x always does; the call is a no-op there).
if redis.replicate_commands then redis.replicate_commands() end
local CLOCK = redis.call('TIME')
local NOW = tonumber(CLOCK[1]) * 1000 + math.floor(tonumber(CLOCK[2]) / 1000)
-- A caller gives up on a call after a bound; a script Redis runs after that (it was
-- stalled, or the reply was lost) must change nothing, so every call carries the deadline
-- (Redis ms) past which it is void.
local DEADLINE = tonumber(ARGV[3]) or 0
if DEADLINE > 0 and NOW > DEADLINE then
  return redis.error_reply('unavailable: Redis ran this step ' .. (NOW - DEADLINE) ..
    ' ms after its caller had given up on it; nothing was changed')
end
local PRIOS = {'urgent', 'high', 'normal', 'low'}
-- seconds an acknowledged message is kept (0: forever); each op that acknowledges sets it
local ACKED_TTL = 86400
local FINISHED = {completed = true, failed = true, cancelled = true}

local function fail(code, msg) return redis.error_reply(code .. ': ' .. msg) end

local function inbox(agent, prio) return P .. 'inbox:' .. agent .. ':' .. prio end

local function inbox_size(agent)
  local keys = {}
  for i, pr in ipairs(PRIOS) do keys[i] = inbox(agent, pr) end
  -- an empty inbox (no list exists) answers in one call
  if redis.call('EXISTS', unpack(keys)) == 0 then return 0 end
  local n = 0
  for _, key in ipairs(keys) do n = n + redis.call('LLEN', key) end
  return n
end

-- {urgent, high, normal, low, in_flight}: what every MCP result reports as "inbox"
local function mailbox_counts(agent)
  local out = {}
  for i, pr in ipairs(PRIOS) do out[i] = redis.call('LLEN', inbox(agent, pr)) end
  out[5] = redis.call('ZCARD', P .. 'inflight:' .. agent)
  return out
end

local function ring(agent)
  -- at most one token: trimmed only when one was there already
  if redis.call('LPUSH', P .. 'bell:' .. agent, '1') > 1 then
    redis.call('LTRIM', P .. 'bell:' .. agent, 0, 0)
  end
end

local function event(kind, data, maxlen)
  redis.call('XADD', P .. 'events', 'MAXLEN', '~', maxlen, '*', 'type', kind, 'data', data)
end

local function hset_table(key, fields)
  local flat = {}
  for k, v in pairs(fields) do flat[#flat + 1] = k; flat[#flat + 1] = tostring(v) end
  if #flat > 0 then redis.call('HSET', key, unpack(flat)) end
end

-- A message record is one JSON string (compact: a hash with a field over 64 bytes leaves
-- its listpack encoding and costs about twice as much); a town written before keeps hash
-- records, read here as well.  msg_get returns the record as a table, or nil.
local function msg_get(id)
  local key = P .. 'msg:' .. id
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' and raw.err then
    local fields = redis.call('HGETALL', key)
    local m = {}
    for i = 1, #fields, 2 do m[fields[i]] = fields[i + 1] end
    return m
  end
  if not raw then return nil end
  local m = cjson.decode(raw)
  m['id'] = id
  return m
end

-- store (or rewrite) a record; a rewrite keeps the expiry an acknowledged message has.
-- The id (it is in the key) and a delivery count of 0 are left out: every byte of a
-- pending message counts in a town with a long backlog.  Returns the stored JSON (receive
-- hands it out as it is, with the id beside it: one encode per delivered message).
local function msg_put(id, m)
  local stored = {}
  for k, v in pairs(m) do stored[k] = v end
  stored['id'] = nil
  if stored['delivery_count'] == '0' then stored['delivery_count'] = nil end
  local raw = cjson.encode(stored)
  redis.call('SET', P .. 'msg:' .. id, raw, 'KEEPTTL')
  return raw
end

local function msg_field(id, name)
  local m = msg_get(id)
  if m then return m[name] end
  return nil
end

-- push a stored message id onto an agent's inbox; front=true for redelivery
local function push(agent, id, prio, front)
  if front then redis.call('LPUSH', inbox(agent, prio), id)
  else redis.call('RPUSH', inbox(agent, prio), id) end
  ring(agent)
end

-- a message about a task joins the task's thread (tt task show): by its task_id, or as a
-- reply to a message of the thread (recorded on the reply as the internal field 'thread')
local function thread_of(msg)
  if msg['task_id'] then return msg['task_id'] end
  if msg['reply_to'] then
    local r = msg_get(msg['reply_to'])
    if r then return r['task_id'] or r['thread'] end
  end
  return nil
end

-- (the caller records the thread on a reply before storing it: msg['thread'] = tid)
local function join_thread(tid, id)
  local key = P .. 'task_msgs:' .. tid
  redis.call('ZADD', key, redis.call('ZCARD', key) + 1, id)
end

local function forget(agent, id)
  redis.call('ZREM', P .. 'inflight:' .. agent, id)
  redis.call('ZREM', P .. 'inflight_due', agent .. '|' .. id)
  if ACKED_TTL > 0 then redis.call('EXPIRE', P .. 'msg:' .. id, ACKED_TTL) end
end

-- a task some unfinished task depends on (its 'dependents' field, tinytown/dependencies.py)
local function needed(tkey)
  local raw = redis.call('HGET', tkey, 'dependents')
  if not raw or raw == '' then return false end
  local ok, ids = pcall(cjson.decode, raw)
  if not ok or type(ids) ~= 'table' then return false end
  for _, d in ipairs(ids) do
    local st = redis.call('HGET', P .. 'task:' .. d, 'state')
    if st and not FINISHED[st] then return true end
  end
  return false
end

-- retention: delete up to `limit` tasks that finished more than keep_ms ago, with their index
-- entries and thread; a task an unfinished task depends on is looked at again later.  Events
-- older than events_ms go too.  Returns how many tasks were deleted.
local function sweep(keep_ms, events_ms, limit)
  if events_ms > 0 then
    redis.call('XTRIM', P .. 'events', 'MINID', '~', string.format('%d', NOW - events_ms))
  end
  if keep_ms <= 0 then return 0 end
  local fkey = P .. 'retention:finished'
  local due = redis.call('ZRANGEBYSCORE', fkey, '-inf', NOW - keep_ms, 'LIMIT', 0, limit)
  local n = 0
  for _, id in ipairs(due) do
    local tkey = P .. 'task:' .. id
    local t = redis.call('HMGET', tkey, 'state', 'assigned_to', 'number')
    if t[1] and not FINISHED[t[1]] then
      redis.call('ZREM', fkey, id)
    elseif needed(tkey) then
      redis.call('ZADD', fkey, NOW, id)
    else
      redis.call('DEL', tkey, P .. 'task_msgs:' .. id)
      redis.call('ZREM', P .. 'tasks', id)
      if t[1] then redis.call('ZREM', P .. 'tasks:state:' .. t[1], id) end
      if t[2] then
        redis.call('ZREM', P .. 'tasks:agent:' .. t[2], id)
        redis.call('ZREM', P .. 'tasks:open:' .. t[2], id)
        if t[1] then redis.call('ZREM', P .. 'tasks:agent:' .. t[2] .. ':' .. t[1], id) end
      end
      if t[3] then redis.call('HDEL', P .. 'task_numbers', t[3]) end
      redis.call('ZREM', fkey, id)
      n = n + 1
    end
  end
  return n
end

-- a full inbox makes room for a task notice by dropping the oldest notice still queued
-- (never delivered); ids of notices delivered meanwhile are discarded on the way
local function drop_oldest_notice(agent)
  local nkey = P .. 'retention:notices:' .. agent
  for _ = 1, 1000 do
    local id = redis.call('LPOP', nkey)
    if not id then return false end
    local m = msg_get(id)
    if m and m['priority'] and (m['delivery_count'] or '0') == '0'
        and redis.call('LREM', inbox(agent, m['priority']), 1, id) == 1 then
      redis.call('DEL', P .. 'msg:' .. id)
      return true
    end
  end
  return false
end

-- how many ids requeue_ids took out of each agent's in-flight set in this call
local REQUEUED = {}

-- move in-flight ids of one agent back to the front, oldest delivery first in line
local function requeue_ids(agent, ids)
  for i = #ids, 1, -1 do
    local id = ids[i]
    REQUEUED[agent] = (REQUEUED[agent] or 0) + redis.call('ZREM', P .. 'inflight:' .. agent, id)
    redis.call('ZREM', P .. 'inflight_due', agent .. '|' .. id)
    local prio = msg_field(id, 'priority')
    if prio then push(agent, id, prio, true) end
  end
  return #ids
end

-- redeliver overdue in-flight messages, except those of an agent seen within the
-- redelivery window: a live runner or MCP session heartbeats while it works on them, so
-- they are postponed until the agent has been silent for that long (it died)
local function requeue_due(now, limit, redeliver_ms)
  local due = redis.call('ZRANGEBYSCORE', P .. 'inflight_due', '-inf', now, 'WITHSCORES',
    'LIMIT', 0, limit)
  local by_agent = {}
  local order = {}
  local seen = {}
  for i = 1, #due, 2 do
    local member = due[i]
    local sep = string.find(member, '|', 1, true)
    local agent = string.sub(member, 1, sep - 1)
    local id = string.sub(member, sep + 1)
    if seen[agent] == nil then
      seen[agent] = tonumber(redis.call('HGET', P .. 'agent:' .. agent, 'last_seen') or '0') or 0
    end
    if now - seen[agent] < redeliver_ms then
      local score = tonumber(due[i + 1])
      local frac = string.sub(string.format('%.3f', score - math.floor(score)), 2)
      redis.call('ZADD', P .. 'inflight_due',
        string.format('%d', seen[agent] + redeliver_ms) .. frac, member)
    else
      if not by_agent[agent] then by_agent[agent] = {}; order[#order + 1] = agent end
      table.insert(by_agent[agent], id)
    end
  end
  for _, agent in ipairs(order) do requeue_ids(agent, by_agent[agent]) end
  return #due / 2
end

-- ARGV: deadline, max_inbox, maxlen, sender name, msg (json fields, with id/to/priority), target
-- target = agent name, or '*' for every agent that is not stopped (except the sender).
-- Names, the task and the replied-to message are checked here: a send is one round trip.
-- A send whose message is stored already (redis-py retried after a lost reply) stores
-- nothing again.
if OP == 'send' then
  local max_inbox = tonumber(ARGV[4])
  local maxlen = ARGV[5]
  local target = ARGV[8]
  local names = redis.call('HMGET', P .. 'agent_names', ARGV[6], target)
  local sender = names[1]
  local msg = cjson.decode(ARGV[7])
  if not sender then return fail('not_found', 'no agent named ' .. ARGV[6] .. ' (the sender)') end
  if target ~= '*' then
    local tid = names[2]
    if not tid then
      return fail('not_found', 'no agent named ' .. target .. '; list_agents / `tt list` show who is here')
    end
    target = tid
  end
  if msg['task_id'] and redis.call('EXISTS', P .. 'task:' .. msg['task_id']) == 0 then
    return fail('not_found', 'no task ' .. msg['task_id'])
  end
  if msg['reply_to'] and redis.call('EXISTS', P .. 'msg:' .. msg['reply_to']) == 0 then
    return fail('not_found', 'no message ' .. msg['reply_to'] .. ' to reply to (ids come from receive)')
  end
  local targets = {}
  if target == '*' then
    for _, aid in ipairs(redis.call('ZRANGE', P .. 'agents', 0, -1)) do
      local a = redis.call('HMGET', P .. 'agent:' .. aid, 'state', 'name')
      if aid ~= sender and a[1] and a[1] ~= 'stopped' then
        targets[#targets + 1] = {aid, a[2]}
      end
    end
  else
    targets[1] = {target, ARGV[8]}
  end
  local ids = {}
  local base = msg['id']
  local retried = false
  for _, t in ipairs(targets) do
    local id = base
    if target == '*' then id = base .. '.' .. t[2] end
    ids[#ids + 1] = id
    if redis.call('EXISTS', P .. 'msg:' .. id) == 1 then retried = true end
  end
  if retried then return ids end
  for _, t in ipairs(targets) do
    if inbox_size(t[1]) >= max_inbox then
      return fail('invalid', 'the inbox of ' .. t[2] .. ' is full (' .. max_inbox ..
        ' pending messages); nothing was sent')
    end
  end
  ids = {}
  local tid = thread_of(msg)
  for _, t in ipairs(targets) do
    local copy = {}
    for k, v in pairs(msg) do copy[k] = v end
    if target == '*' then copy['id'] = base .. '.' .. t[2] end
    if tid and not copy['task_id'] then copy['thread'] = tid end
    msg_put(copy['id'], copy)
    push(t[1], copy['id'], copy['priority'], false)
    ids[#ids + 1] = copy['id']
    if tid then join_thread(tid, copy['id']) end
  end
  -- 'copy' names a stored copy of a broadcast (the base id is not stored): history reads it
  local copy_id = nil
  if target == '*' then copy_id = ids[1] end
  event('message.sent', cjson.encode({id = base, from = msg['from'], to = msg['to'],
    kind = msg['kind'], priority = msg['priority'], task_id = msg['task_id'],
    reply_to = msg['reply_to'], copy = copy_id, copies = #ids}), maxlen)
  return ids
end

-- ARGV: deadline, agent, session, max, redelivery_ms, ack_previous, maxlen, max_bytes, batch,
--       ack_batch, claim, release, mine, acked_ttl
-- batch: this receive's tag ("<session>/<process>/<n>"), written on every message it delivers, so a
-- batch can be acknowledged or put back as a whole.  claim ('1' on a receive's first call)
-- makes it the agent's one waiting receive: an older one still waiting is woken and finds
-- itself superseded.  With ack_previous the batch ack_batch (the one this session's client
-- saw) is acknowledged, and every other batch whose tag starts with mine (this session in
-- this process: a runner and its round's MCP server share a session) was given and not
-- acknowledged — answered to a client that had given up, cancelled, superseded — goes back.
-- A retry of the same call (its reply was lost) gets the same batch again, not a second one.
if OP == 'receive' then
  local now = NOW
  local agent = ARGV[4]
  local session = ARGV[5]
  local max = tonumber(ARGV[6])
  local redeliver_ms = tonumber(ARGV[7])
  local ack_previous = ARGV[8] == '1'
  local maxlen = ARGV[9]
  local batch = ARGV[11]
  local ack_batch = ARGV[12]
  local claim = ARGV[13] == '1'
  local release = ARGV[14] == '1'
  local mine = ARGV[15] or ''
  ACKED_TTL = tonumber(ARGV[16] or ACKED_TTL)
  local akey = P .. 'agent:' .. agent
  local rkey = P .. 'receiver:' .. agent
  local a = redis.call('HMGET', akey, 'name', 'session', 'state')
  if not a[1] then return fail('not_found', 'this agent is no longer registered') end
  if session ~= '' and a[2] and a[2] ~= session then
    return fail('conflict', 'a newer session of ' .. a[1] .. ' took over its mailbox; ' ..
      'this session no longer receives')
  end
  if claim then
    local old = redis.call('GET', rkey)
    if old and old ~= batch then ring(agent) end
    redis.call('SET', rkey, batch)
  elseif redis.call('GET', rkey) ~= batch then
    -- pass on a wake-up this receive may have taken from its successor
    if inbox_size(agent) > 0 then ring(agent) end
    return fail('conflict', 'a newer receive of ' .. a[1] .. ' replaced this one (one receive ' ..
      'waits per agent at a time); nothing was taken')
  end
  local again = {}
  local back = {}
  local flying = redis.call('ZRANGE', P .. 'inflight:' .. agent, 0, -1)
  local acked = 0
  for _, id in ipairs(flying) do
    local tag = msg_field(id, 'batch')
    if tag == batch then again[#again + 1] = id
    elseif ack_previous and tag and tag == ack_batch then forget(agent, id); acked = acked + 1
    elseif ack_previous and mine ~= '' and tag and string.sub(tag, 1, #mine) == mine then
      back[#back + 1] = id
    end
  end
  if #back > 0 then requeue_ids(agent, back) end
  -- out: the delivered records (JSON, without their id), ids: their ids, in the same order
  local out = {}
  local ids = {}
  if #again > 0 then
    for _, id in ipairs(again) do
      local m = msg_get(id)
      if m then out[#out + 1] = cjson.encode(m); ids[#ids + 1] = id end
    end
    -- this receive owns the receiver key (claimed or checked above): it is done waiting
    redis.call('DEL', rkey)
    return {mailbox_counts(agent), out, ids}
  end
  requeue_due(now, 100, redeliver_ms)
  -- the in-flight set's size now: what the scan found, less what left it since
  local held = #flying - acked - (REQUEUED[agent] or 0)
  -- bodies up to max_bytes per batch (0: no cap); the message that would pass it goes back
  -- to the head of its list for the next receive, so one batch always holds at least one
  local max_bytes = tonumber(ARGV[10] or '0') or 0
  local taken = 0
  -- the length of each list after the pops, where a short pop tells it (nil: ask LLEN)
  local left = {}
  local added = 0  -- new members of the in-flight set: held + added is its size after
  -- a paused agent is given nothing: its mail waits in the inbox (and the bell goes quiet
  -- below) until resume rings the bell again
  local full = a[3] == 'paused'
  for i, pr in ipairs(PRIOS) do
    while #out < max and not full do
      local want = max - #out
      -- one LPOP with a count (Redis >= 6.2) takes what this list can give the batch
      local popped = redis.call('LPOP', inbox(agent, pr), want) or {}
      local short = #popped < want
      if short then left[i] = 0 end
      for j, id in ipairs(popped) do
        local m = msg_get(id)
        if m and max_bytes > 0 and #out > 0
            and taken + string.len(m['body'] or '') > max_bytes then
          -- over the cap: this one and the rest go back to the head, in order, untouched
          local rest = {}
          for k = #popped, j, -1 do rest[#rest + 1] = popped[k] end
          redis.call('LPUSH', inbox(agent, pr), unpack(rest))
          if short then left[i] = #rest end
          full = true
          break
        end
        if m then
          m['delivery_count'] = tostring((tonumber(m['delivery_count']) or 0) + 1)
          m['batch'] = batch
          local raw = msg_put(id, m)
          -- the delivery position as a fraction of a ms keeps delivery order in the zsets
          -- (equal scores sort by id, which would shuffle a requeued batch)
          local frac = string.format('.%03d', math.min(held + #out, 999))
          added = added + redis.call('ZADD', P .. 'inflight:' .. agent,
            string.format('%d', now) .. frac, id)
          redis.call('ZADD', P .. 'inflight_due', string.format('%d', now + redeliver_ms) .. frac,
            agent .. '|' .. id)
          out[#out + 1] = raw
          ids[#ids + 1] = id
          taken = taken + string.len(m['body'] or '')
          local task_id = m['task_id']
          if m['kind'] == 'task' and task_id then
            local tkey = P .. 'task:' .. task_id
            local t = redis.call('HMGET', tkey, 'state', 'assigned_to', 'attempt', 'seq')
            local current = t[2] == agent and (not m['attempt'] or m['attempt'] == t[3])
            if current and t[1] == 'assigned' then
              redis.call('HSET', tkey, 'state', 'running', 'started_at', now, 'updated_at', now)
              redis.call('ZREM', P .. 'tasks:state:assigned', task_id)
              redis.call('ZADD', P .. 'tasks:state:running', t[4], task_id)
              redis.call('HSET', akey, 'current_task', task_id)
              -- a paused agent stays paused (its runner puts the batch back)
              if a[3] ~= 'paused' then redis.call('HSET', akey, 'state', 'working') end
              event('task.started', cjson.encode({task_id = task_id, agent = a[1]}), maxlen)
            elseif current and t[1] == 'running' then
              redis.call('HSET', akey, 'current_task', task_id)  -- given back after a crash
            end
            -- the session that now holds the task (tt recover: a live agent's task held by a
            -- session that is gone comes back to the current one)
            if current and (t[1] == 'assigned' or t[1] == 'running') and a[2] then
              redis.call('HSET', tkey, 'held_by', a[2])
            end
          end
        end
      end
      if short then break end
    end
  end
  -- fewer than asked means every list is empty now: the bell has nothing to announce
  -- (a full batch leaves it; a spurious wake costs one empty pop, never a lost message)
  if #out < max and (not full or a[3] == 'paused') then redis.call('DEL', P .. 'bell:' .. agent) end
  -- this receive owns the receiver key (claimed or checked above)
  if #out > 0 or release then redis.call('DEL', rkey) end
  if a[3] == 'starting' then
    redis.call('HSET', akey, 'last_seen', now, 'state', 'idle')
  else
    redis.call('HSET', akey, 'last_seen', now)
  end
  local counts = {}
  for i, pr in ipairs(PRIOS) do counts[i] = left[i] or redis.call('LLEN', inbox(agent, pr)) end
  counts[5] = held + added
  return {counts, out, ids}
end

-- ARGV: deadline, agent, batch -> how many of that batch's unacknowledged messages went back
if OP == 'requeue_batch' then
  local agent = ARGV[4]
  local back = {}
  for _, id in ipairs(redis.call('ZRANGE', P .. 'inflight:' .. agent, 0, -1)) do
    if msg_field(id, 'batch') == ARGV[5] then back[#back + 1] = id end
  end
  return requeue_ids(agent, back)
end

-- ARGV: deadline, agent, tasks_keep_ms, events_keep_ms, sweep batch: a sign of life, stamped
-- with Redis's clock; and a bounded retention sweep
if OP == 'touch' then
  local akey = P .. 'agent:' .. ARGV[4]
  if redis.call('EXISTS', akey) == 0 then return fail('not_found', 'this agent is no longer registered') end
  redis.call('HSET', akey, 'last_seen', NOW)
  sweep(tonumber(ARGV[5] or '0'), tonumber(ARGV[6] or '0'), tonumber(ARGV[7] or '0'))
  return NOW
end

-- ARGV: deadline, tasks_keep_ms, events_keep_ms, batch -> how many tasks expired
if OP == 'sweep' then
  return sweep(tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]))
end

-- ARGV: deadline, agent, acked_ttl, id...
if OP == 'ack' then
  local agent = ARGV[4]
  ACKED_TTL = tonumber(ARGV[5])
  local n = 0
  for i = 6, #ARGV do
    if redis.call('ZSCORE', P .. 'inflight:' .. agent, ARGV[i]) then
      forget(agent, ARGV[i]); n = n + 1
    end
  end
  return n
end

-- ARGV: deadline, agent -> {urgent, high, normal, low, in_flight}
if OP == 'counts' then
  return mailbox_counts(ARGV[4])
end

-- ARGV: deadline, agent
if OP == 'requeue' then
  local agent = ARGV[4]
  return requeue_ids(agent, redis.call('ZRANGE', P .. 'inflight:' .. agent, 0, -1))
end

-- ARGV: deadline, agent, task_id or '', maxlen, session ('' = the agent's current one)
if OP == 'claim' then
  local now = NOW
  local agent = ARGV[4]
  local task_id = ARGV[5]
  local maxlen = ARGV[6]
  local akey = P .. 'agent:' .. agent
  local a = redis.call('HMGET', akey, 'name', 'session')
  local name = a[1]
  if not name then return fail('not_found', 'this agent is no longer registered') end
  local holder = ARGV[7] or ''
  if holder ~= '' and a[2] and a[2] ~= holder then
    return fail('conflict', 'a newer session of ' .. name .. ' took over; this session no longer claims')
  end
  if holder == '' then holder = a[2] or '' end
  if task_id == '' then
    local oldest = redis.call('ZRANGE', P .. 'tasks:state:pending', 0, 0)
    if #oldest == 0 then return fail('not_found', 'the backlog is empty; nothing to claim') end
    task_id = oldest[1]
  end
  local tkey = P .. 'task:' .. task_id
  local t = redis.call('HMGET', tkey, 'state', 'seq', 'assigned_to')
  if not t[1] then return fail('not_found', 'no task ' .. task_id) end
  if t[1] ~= 'pending' then
    return fail('conflict', 'task ' .. task_id .. ' is ' .. t[1] .. ', not in the backlog')
  end
  local attempt = redis.call('HINCRBY', tkey, 'attempt', 1)
  redis.call('HSET', tkey, 'state', 'running', 'assigned_to', agent, 'assignee', name,
    'started_at', now, 'updated_at', now, 'held_by', holder)
  redis.call('ZREM', P .. 'tasks:state:pending', task_id)
  redis.call('ZADD', P .. 'tasks:state:running', t[2], task_id)
  redis.call('ZADD', P .. 'tasks:agent:' .. agent, t[2], task_id)
  redis.call('ZADD', P .. 'tasks:open:' .. agent, t[2], task_id)
  redis.call('HSET', akey, 'current_task', task_id, 'state', 'working', 'last_seen', now)
  event('task.claimed', cjson.encode({task_id = task_id, agent = name, attempt = attempt}), maxlen)
  return task_id
end

-- ARGV: deadline, plan (json)
-- plan = {guards = {{key, field, any = {values; '' = absent}}}, max_inbox, maxlen,
--         limits = {{zset key, most members, code, sentence}},
--         ack = {{agent, message id, priority}}  (acknowledged wherever it is: in flight or queued),
--         hset = {{key, fields}}, hdel = {{key, fields}}, hincr = {{key, field, by}},
--         zadd = {{key, score, member}}, zrem = {{key, member}}, del = {key},
--         send = {{agent, fields}}, events = {{type, data}}, conflict = sentence,
--         stamp = {{key, field}}: set to Redis's clock (last_seen and the like),
--         number = {{counter, index, task key, task id}},
--         created = {{counter, task key, task id, {zset key...}}},
--         finish = {task id}: finished now (the retention index), acked_ttl,
--         sweep = {tasks_keep_ms, events_keep_ms, batch},
--         refs = {{key, field, {item...}}}}
-- a send entry {agent, fields, name, true} is a task notice: it never fails the plan (see
-- drop_oldest_notice; with no notice to drop it is not sent)
-- number: each new task gets the next per-town number (field "number" and index
-- number -> id) in this same write; the reply is the list of numbers given
-- created: each new task gets the next seq of the counter (field "seq"), and an entry in each
-- zset with it, in this same write (no round trip to reserve the seqs first)
-- refs: a JSON list of task references written after numbering: an item that is a number i
-- becomes '#' .. the i-th number given above (a task of this same plan), a string stays
if OP == 'apply' then
  local plan = cjson.decode(ARGV[4])
  for _, g in ipairs(plan.guards or {}) do
    local v = redis.call('HGET', P .. g[1], g[2]) or ''
    local ok = false
    for _, want in ipairs(g[3]) do if v == want then ok = true end end
    if not ok then return fail(g[4] or 'conflict', g[5] or plan.conflict or 'changed meanwhile') end
  end
  for _, l in ipairs(plan.limits or {}) do
    if redis.call('ZCARD', P .. l[1]) >= tonumber(l[2]) then return fail(l[3], l[4]) end
  end
  for _, s in ipairs(plan.send or {}) do
    if not s[4] and inbox_size(s[1]) >= plan.max_inbox then
      return fail('invalid', 'the inbox of ' .. s[3] .. ' is full; nothing was changed')
    end
  end
  if plan.acked_ttl then ACKED_TTL = tonumber(plan.acked_ttl) end
  for _, h in ipairs(plan.hset or {}) do hset_table(P .. h[1], h[2]) end
  local numbers = {}
  for _, n in ipairs(plan.number or {}) do
    local num = redis.call('INCR', P .. n[1])
    redis.call('HSET', P .. n[3], 'number', num)
    redis.call('HSET', P .. n[2], num, n[4])
    numbers[#numbers + 1] = num
  end
  for _, c in ipairs(plan.created or {}) do
    local seq = redis.call('INCR', P .. c[1])
    redis.call('HSET', P .. c[2], 'seq', seq)
    for _, z in ipairs(c[4]) do redis.call('ZADD', P .. z, seq, c[3]) end
  end
  for _, r in ipairs(plan.refs or {}) do
    local out = {}
    for _, item in ipairs(r[3]) do
      if type(item) == 'number' then out[#out + 1] = '#' .. numbers[item] else out[#out + 1] = item end
    end
    redis.call('HSET', P .. r[1], r[2], cjson.encode(out))
  end
  for _, h in ipairs(plan.hdel or {}) do
    if #h[2] > 0 then redis.call('HDEL', P .. h[1], unpack(h[2])) end
  end
  for _, h in ipairs(plan.stamp or {}) do redis.call('HSET', P .. h[1], h[2], NOW) end
  for _, h in ipairs(plan.hincr or {}) do redis.call('HINCRBY', P .. h[1], h[2], h[3]) end
  for _, z in ipairs(plan.zrem or {}) do redis.call('ZREM', P .. z[1], z[2]) end
  for _, z in ipairs(plan.zadd or {}) do redis.call('ZADD', P .. z[1], z[2], z[3]) end
  for _, k in ipairs(plan.del or {}) do redis.call('DEL', P .. k) end
  for _, m in ipairs(plan.ack or {}) do
    if redis.call('EXISTS', P .. 'msg:' .. m[2]) == 1 then
      redis.call('LREM', inbox(m[1], m[3]), 0, m[2])
      forget(m[1], m[2])
    end
  end
  for _, s in ipairs(plan.send or {}) do
    local room = true
    if s[4] then
      room = inbox_size(s[1]) < plan.max_inbox or drop_oldest_notice(s[1])
    end
    if room then
      msg_put(s[2].id, s[2])
      push(s[1], s[2].id, s[2].priority, false)
      if s[2].task_id then join_thread(s[2].task_id, s[2].id) end
      if s[4] then
        local nkey = P .. 'retention:notices:' .. s[1]
        redis.call('RPUSH', nkey, s[2].id)
        redis.call('LTRIM', nkey, -plan.max_inbox, -1)
        -- forget up to two notices delivered meanwhile: the list tracks the queued ones
        for _ = 1, 2 do
          local head = redis.call('LINDEX', nkey, 0)
          local queued = head and msg_get(head)
          if not head or (queued and (queued['delivery_count'] or '0') == '0') then break end
          redis.call('LPOP', nkey)
        end
      end
    end
  end
  for _, id in ipairs(plan.finish or {}) do redis.call('ZADD', P .. 'retention:finished', NOW, id) end
  for _, e in ipairs(plan.events or {}) do event(e[1], e[2], plan.maxlen) end
  -- a resumed agent's waiting receive looks at its inbox again
  for _, aid in ipairs(plan.ring or {}) do if inbox_size(aid) > 0 then ring(aid) end end
  if plan.sweep then sweep(plan.sweep[1], plan.sweep[2], plan.sweep[3]) end
  return numbers
end

return fail('invalid', 'unknown script operation ' .. tostring(OP))
"""
