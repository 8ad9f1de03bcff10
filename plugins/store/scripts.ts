// The Lua scripts the Redis store runs: each one atomic step on Redis, with the keys and
// arguments it takes. redis.ts sends them; memory.ts makes the same decisions in-process.

/**
 * The session index of a subject, as Lua the other scripts begin with. Two keys in the subject's
 * hash slot: `sessions`, a hash: sid -> `<issued µs> <refreshed - issued s> <expires - refreshed s>
 * <client_id>`, then a newline and the device label if there is one (short, so that Redis keeps a
 * subject's hash in its compact listpack encoding); and `sessions:by-expiry`, the sids scored by
 * their refresh token's exp (s). Each step drops what expired, and both keys live until the last
 * session's expiry (plus LEEWAY): nothing outlives the longest session.
 *
 * - `indexOf(hash, byExpiry, subject, nowMs, leeway, overhang)`: the index of one call; `subject`
 *   is the `<prefix>{<tag>}` a session's revocation key starts with, `overhang` how far past its
 *   refresh token an access token may live (s).
 * - `list(index, markKey, sid, head, device, expiresAt, max)`: lists a session, or updates it (a
 *   device given before is kept); a newly listed one past `max` ends the oldest others (the
 *   revoked and expired ones leave first, at no cost). Answers the sids it ended.
 * - `finish(index, sid)`: revokes a listed session (for as long as its tokens live) and unlists it.
 * - `unlist(index, sid)`: drops a session from the index (its revocation is written elsewhere).
 * - `subjectMark(key)`: the subject's "log out everywhere" mark (µs); a mark in seconds (before
 *   Rotor 0.2) is read as the last microsecond of that second, as revokedUntilUs does.
 * - `alive(index, mark, sid, entry)`: whether a listed session is neither expired nor revoked.
 * - `issuedOf(entry)`: when the session was issued (µs), from its entry.
 * - `pastDeadline(ms)`: whether Redis's clock is past a deadline Rotor set (it gave up by then).
 */
const INDEX = `
local function pastDeadline (deadlineMs)
  local clock = redis.call('TIME')
  return tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) > tonumber(deadlineMs)
end
local function subjectMark (key)
  local mark = tonumber(redis.call('GET', key) or '-1')
  if mark >= 0 and mark < 1e11 then mark = (mark + 1) * 1000000 - 1 end
  return mark
end
local function indexOf (hash, byExpiry, subject, nowMs, leeway, overhang)
  return { hash = hash, byExpiry = byExpiry, subject = subject,
    now = tonumber(nowMs), leeway = tonumber(leeway), overhang = tonumber(overhang) }
end
local function issuedOf (entry)
  return tonumber(string.match(entry, '^%d+'))
end
local function unlist (index, sid)
  redis.call('ZREM', index.byExpiry, sid)
  return redis.call('HDEL', index.hash, sid)
end
local function finish (index, sid)
  local expiresAt = tonumber(redis.call('ZSCORE', index.byExpiry, sid))
  local ttl = math.max(1, math.ceil((expiresAt + index.leeway + index.overhang) * 1000 - index.now))
  redis.call('SET', index.subject .. ':s:' .. sid, '1', 'PX', ttl)
  unlist(index, sid)
end
local function alive (index, mark, sid, entry)
  local expiresAt = redis.call('ZSCORE', index.byExpiry, sid)
  if not expiresAt or (tonumber(expiresAt) + index.leeway) * 1000 < index.now then return false end
  if redis.call('EXISTS', index.subject .. ':s:' .. sid) == 1 then return false end
  return issuedOf(entry) > mark
end
local function prune (index)
  local horizon = (index.now / 1000) - index.leeway
  for _, sid in ipairs(redis.call('ZRANGEBYSCORE', index.byExpiry, '-inf', '(' .. horizon)) do unlist(index, sid) end
end
local function expire (index)
  local last = redis.call('ZRANGE', index.byExpiry, -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('DEL', index.hash, index.byExpiry)
    return
  end
  local at = string.format('%.0f', (tonumber(last[2]) + index.leeway) * 1000)
  redis.call('PEXPIREAT', index.hash, at)
  redis.call('PEXPIREAT', index.byExpiry, at)
end
local function list (index, markKey, sid, head, device, expiresAt, max)
  prune(index)
  local listed = redis.call('HGET', index.hash, sid)
  local label = ''
  if device ~= '' then
    label = string.char(10) .. device
  elseif listed then
    local at = string.find(listed, string.char(10), 1, true)
    if at then label = string.sub(listed, at) end
  end
  redis.call('HSET', index.hash, sid, head .. label)
  redis.call('ZADD', index.byExpiry, expiresAt, sid)
  local ended = {}
  if not listed and redis.call('HLEN', index.hash) > max then
    local mark = subjectMark(markKey)
    local others = {}
    local entries = redis.call('HGETALL', index.hash)
    for i = 1, #entries, 2 do
      local other, entry = entries[i], entries[i + 1]
      if other ~= sid then
        if alive(index, mark, other, entry) then others[#others + 1] = { other, issuedOf(entry) } else unlist(index, other) end
      end
    end
    table.sort(others, function (a, b) return a[2] < b[2] or (a[2] == b[2] and a[1] < b[1]) end)
    for i = 1, #others + 1 - max do
      finish(index, others[i][1])
      ended[#ended + 1] = others[i][1]
    end
  end
  expire(index)
  return ended
end
`

/**
 * The rotation decision, atomically, and the session's entry in the index. KEYS: the jti's record,
 * the session's revocation, the subject's revocation, the successor's record, the index's two
 * keys. ARGV: now (ms), the jti's remaining life (ms), grace (ms), the session's issuance (µs),
 * enforce (1/0), the session revocation's life (ms), how long a rotation may still be in flight
 * (ms), a deadline on Redis's own clock (ms); then for the index: the subject's key prefix, the
 * sid, the entry (without device), the successor's exp (s), MAX_SESSIONS_PER_SUBJECT, LEEWAY (s)
 * and the access tokens' overhang (s). Answers the status, the rotation's time, 1 when the record is
 * still unconfirmed, and the sids the cap ended. A reuse (enforced) or a revoked session leaves
 * the index; a rotation lists its session (again, if it had left: a session issued while Redis
 * was unreachable is listed from its first refresh); a retry within the window changes nothing.
 * The in-process store (memory.ts) makes the same decisions in the same order.
 *
 * A rotation is written unconfirmed (`-<ms>`) and confirmed (`<ms>`, CONFIRM) once Rotor has its
 * answer. Redis can run a rotation whose answer never reaches Rotor (a reply that is late or lost
 * on a reset connection, a WAIT the replicas missed, a script that ran after Rotor gave up on a
 * hung Redis): Rotor answered 503 and the client still holds the old token. For that client the
 * rotation never happened, so an unconfirmed rotation is not a reuse however late the retry
 * comes; the retry gets the same successor, and the record is confirmed. It ends as any grace
 * does: once the successor is rotated itself, a replay is a reuse. With REFRESH_REUSE_GRACE=0 an
 * unconfirmed rotation younger than the in-flight bound may still get its answer: a second
 * presentation then is a reuse, as without it.
 *
 * The deadline: a script that starts after Rotor gave up on it (a Redis that hung and woke, or a
 * Cluster client that sent it again after its connection closed) runs for nobody, and it could
 * meet a state its client moved past meanwhile (the successor, rotated by the client's retry): it
 * writes nothing and answers an error. It is earlier than Rotor's command timeout. An error Rotor
 * still reads (its own process stalled before the script left) makes it send the rotation again.
 */
const ROTATION = `
local index = indexOf(KEYS[5], KEYS[6], ARGV[9], ARGV[1], ARGV[14], ARGV[15])
local rotated = redis.call('GET', KEYS[1])
local now = tonumber(ARGV[1])
local at, unconfirmed = 0, false
if rotated then
  at = tonumber(rotated)
  unconfirmed = at < 0
  at = math.abs(at)
  local grace = tonumber(ARGV[3])
  local lost = unconfirmed and (grace > 0 or now - at > tonumber(ARGV[7]))
  if redis.call('EXISTS', KEYS[4]) == 1 or not lost and (grace == 0 or now - at > grace) then
    if ARGV[5] == '1' then
      redis.call('SET', KEYS[2], '1', 'PX', ARGV[6])
      unlist(index, ARGV[10])
    end
    return {'reused', '0', 0, {}}
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 or subjectMark(KEYS[3]) >= tonumber(ARGV[4]) then
  unlist(index, ARGV[10])
  return {'revoked', '0', 0, {}}
end
if rotated then return {'grace', string.format('%.0f', at), unconfirmed and 1 or 0, {}} end
redis.call('SET', KEYS[1], '-' .. ARGV[1], 'PX', ARGV[2])
return {'rotated', ARGV[1], 1, list(index, KEYS[3], ARGV[10], ARGV[11], '', ARGV[12], tonumber(ARGV[13]))}
`
const DEADLINE = `
if pastDeadline(ARGV[8]) then
  return redis.error_reply('ROTORLATE the rotation started after its deadline; nothing was recorded')
end
`
export const ROTATE = `${INDEX}${DEADLINE}${ROTATION}`

const PROOF = `
if not redis.call('SET', KEYS[7], '1', 'PX', ARGV[16], 'NX') then return {'replayed', '0', 0, {}} end
`
/**
 * ROTATE for a session bound to a DPoP key: first the proof's one-time record, KEYS[7], for
 * ARGV[16] ms (as consumeOnce writes it); a proof seen before answers `replayed` and nothing else
 * is done. One atomic step, so a proof cannot be replayed even concurrently.
 */
export const ROTATE_PROVEN = `${INDEX}${DEADLINE}${PROOF}${ROTATION}`

/**
 * The request's rate-limit budget, counted as @fastify/rate-limit's own script counts (INCR; the
 * window starts at the first count; plugins/rate-limit.ts COUNT): the last of KEYS; ARGV's last
 * two: the limit, the window (ms). Over the limit the answer is `limited` and nothing else is
 * done; every answer ends with the count and the window's time left (ms).
 */
const BUDGET = `
local budget = KEYS[#KEYS]
local spent = redis.call('INCR', budget)
local left = tonumber(ARGV[#ARGV])
if spent == 1 then redis.call('PEXPIRE', budget, left) else left = redis.call('PTTL', budget) end
local function counted (answer)
  answer[5] = spent
  answer[6] = left
  return answer
end
if spent > tonumber(ARGV[#ARGV - 1]) then return counted({'limited', '0', 0, {}}) end
`

/**
 * ROTATE and ROTATE_PROVEN, counting the request's rate-limit budget first (BUDGET), after the
 * deadline's check (a late script counts nothing): the request's one round trip to Redis.
 */
export const ROTATE_COUNTED = `${INDEX}${DEADLINE}${BUDGET}
return counted((function ()
${ROTATION}
end)())`
export const ROTATE_PROVEN_COUNTED = `${INDEX}${DEADLINE}${BUDGET}
return counted((function ()
${PROOF}${ROTATION}
end)())`

/**
 * A subject's revocation only ever moves forward in time, and the sessions it ends leave the
 * index. KEYS: the subject's record, the index's two keys. ARGV: until (µs), TTL (ms), the
 * subject's key prefix, now (ms), LEEWAY (s). Written with %.0f: Lua would print a number this
 * large in exponent form.
 */
export const REVOKE_SUBJECT = `${INDEX}
local mark = math.max(subjectMark(KEYS[1]), tonumber(ARGV[1]))
redis.call('SET', KEYS[1], string.format('%.0f', mark), 'PX', ARGV[2])
local index = indexOf(KEYS[2], KEYS[3], ARGV[3], ARGV[4], ARGV[5], 0)
local entries = redis.call('HGETALL', index.hash)
for i = 1, #entries, 2 do
  if issuedOf(entries[i + 1]) <= mark then unlist(index, entries[i]) end
end
prune(index)
expire(index)
return 1
`

/** A session's revocation (logout), and it leaves the index. KEYS: the session's record, the index's two keys. ARGV: TTL (ms), the sid, LEEWAY (s). */
export const REVOKE_SESSION = `${INDEX}
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
local index = indexOf(KEYS[2], KEYS[3], '', 0, ARGV[3], 0)
unlist(index, ARGV[2])
expire(index)
return 1
`

/**
 * Lists a session in the index (see INDEX). KEYS: the index's two keys, the subject's
 * revocation. ARGV: the subject's key prefix, now (ms), LEEWAY (s), the overhang (s), the sid,
 * the entry (without device), the device ('' for none), its expiry (s), MAX_SESSIONS_PER_SUBJECT,
 * a deadline on Redis's clock (ms): as the rotation's, a write that starts after Rotor gave up
 * on it does nothing (no session ended for a cap nobody hears of; the session is listed at its
 * first refresh). Answers the sids the cap ended.
 */
export const RECORD_SESSION = `${INDEX}
if pastDeadline(ARGV[10]) then
  return redis.error_reply('ROTORLATE the session was to be listed before its deadline; nothing was recorded')
end
local index = indexOf(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return list(index, KEYS[3], ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9]))
`

/**
 * The subject's live sessions, newest first, as flat pairs: sid, entry. Drops from the index what
 * expired or was revoked meanwhile. KEYS and the first four ARGV as RECORD_SESSION.
 */
export const LIST_SESSIONS = `${INDEX}
local index = indexOf(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
local mark = subjectMark(KEYS[3])
local found = {}
local entries = redis.call('HGETALL', index.hash)
for i = 1, #entries, 2 do
  if alive(index, mark, entries[i], entries[i + 1]) then
    found[#found + 1] = { entries[i], entries[i + 1], issuedOf(entries[i + 1]) }
  else
    unlist(index, entries[i])
  end
end
table.sort(found, function (a, b) return a[3] > b[3] or (a[3] == b[3] and a[1] > b[1]) end)
local flat = {}
for _, session in ipairs(found) do
  flat[#flat + 1] = session[1]
  flat[#flat + 1] = session[2]
end
expire(index)
return flat
`

/**
 * Ends listed, live sessions of a subject: with ARGV[5] `only`, those named from ARGV[6] on; with
 * `except`, every one but ARGV[6]. KEYS and the first four ARGV as RECORD_SESSION. Answers the
 * sids it ended.
 */
export const END_SESSIONS = `${INDEX}
local index = indexOf(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
local mark = subjectMark(KEYS[3])
local candidates = {}
if ARGV[5] == 'except' then
  for _, sid in ipairs(redis.call('HKEYS', index.hash)) do
    if sid ~= ARGV[6] then candidates[#candidates + 1] = sid end
  end
else
  for i = 6, #ARGV do candidates[#candidates + 1] = ARGV[i] end
end
local ended = {}
for _, sid in ipairs(candidates) do
  local entry = redis.call('HGET', index.hash, sid)
  if entry and alive(index, mark, sid, entry) then
    finish(index, sid)
    ended[#ended + 1] = sid
  end
end
prune(index)
expire(index)
return ended
`

/** Confirms rotations Rotor got the answers of. KEYS: their jtis' records. ARGV: their times (ms), in the same order. */
export const CONFIRM = `
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == '-' .. ARGV[i] then redis.call('SET', KEYS[i], ARGV[i], 'KEEPTTL') end
end
return 1
`
