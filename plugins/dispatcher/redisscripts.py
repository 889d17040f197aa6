"""The Lua scripts :mod:`plugins.dispatcher.redisstate` runs in Redis (each runs whole, alone).

Keys and messages are described in :mod:`plugins.dispatcher.redisstate`. Times inside are
Redis' own (``TIME``, ``PX``); a script touches keys of one cluster name only.
"""

# KEYS: seq, epoch, then one health key per item; ARGV: channel, then per item its JSON (without
# the seq, ending in '}'), its TTL in ms (0: kept) and the seq the writer last saw ('' : write
# anyway; else the item is skipped when the entry changed since). Numbers, stores and publishes
# each item; the epoch goes with the seq (a Redis that lost everything counts from 1 again).
STATE_LUA = """
local out = {}
local epoch = redis.call('GET', KEYS[2]) or ''
for i = 3, #KEYS do
  local body, ttl, expect = ARGV[3 * i - 7], tonumber(ARGV[3 * i - 6]), ARGV[3 * i - 5]
  local write = true
  if expect ~= '' then
    local cur = redis.call('GET', KEYS[i])
    if cur then
      local ok, old = pcall(cjson.decode, cur)
      write = not ok or type(old) ~= 'table' or tostring(old['s']) == expect
    end
  end
  if write then
    local seq = redis.call('INCR', KEYS[1])
    local msg = string.sub(body, 1, -2) .. ',"s":' .. seq .. ',"e":' .. cjson.encode(epoch) .. '}'
    if ttl > 0 then redis.call('SET', KEYS[i], msg, 'PX', ttl) else redis.call('SET', KEYS[i], msg) end
    redis.call('PUBLISH', ARGV[1], msg)
    out[#out + 1] = seq
  else
    out[#out + 1] = 0
  end
end
return out
"""

# KEYS: this node's load hash; ARGV: channel, ttl ms, full ('1': replace the hash), the message,
# then field, count pairs (0 deletes the field).
LOAD_LUA = """
if ARGV[3] == '1' then redis.call('DEL', KEYS[1]) end
for i = 5, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) > 0 then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  else redis.call('HDEL', KEYS[1], ARGV[i]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[1], ARGV[4])
return 1
"""

# KEYS: this node's load hash, the probers set, then the lease key of every shard; ARGV: node,
# ttl ms, active ('1': this node probes), wanted shards ('0'/'1' per shard). Returns
# {holder per shard ('' none), live probers}.
LEASE_LUA = """
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local active = ARGV[3] == '1'
if active then redis.call('ZADD', KEYS[2], now, ARGV[1]) else redis.call('ZREM', KEYS[2], ARGV[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
local holders = {}
for i = 3, #KEYS do
  local want = active and string.sub(ARGV[4], i - 2, i - 2) == '1'
  local cur = redis.call('GET', KEYS[i])
  if want then
    if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[i], ARGV[2])
    elseif not cur then redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2]); cur = ARGV[1] end
  elseif cur == ARGV[1] then
    redis.call('DEL', KEYS[i]); cur = false
  end
  holders[#holders + 1] = cur or ''
end
return {holders, redis.call('ZRANGE', KEYS[2], 0, -1)}
"""

# KEYS: the epoch key, the admin hash; ARGV: a new epoch, then field, JSON pairs of this node's
# operator disables. A Redis without an epoch holds no cluster state (new, or restarted without
# persistence): the epoch is set and this node's disables written, in one step (1); else 0.
EPOCH_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
  return 1
end
return 0
"""

# KEYS: the lease keys, the probers set, the load hash; ARGV: node. Leaving: all of it at once.
LEAVE_LUA = """
for i = 1, #KEYS - 2 do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
redis.call('ZREM', KEYS[#KEYS - 1], ARGV[1])
redis.call('DEL', KEYS[#KEYS])
return 1
"""

# KEYS: health keys of the entries a prober owns; ARGV: their TTL in ms. Extends the keys that
# expire (not the kept ones: D) and returns the positions of the missing ones.
REFRESH_LUA = """
local missing = {}
for i = 1, #KEYS do
  local ttl = redis.call('PTTL', KEYS[i])
  if ttl == -2 then missing[#missing + 1] = i
  elseif ttl > 0 then redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
end
return missing
"""
