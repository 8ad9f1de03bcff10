// The Lua scripts the Redis store runs: each one atomic step on Redis, with the keys and
// arguments it takes. redis.ts sends them; memory.ts makes the same decisions in-process.

/**
 * The rotation decision, atomically. KEYS: the jti's record, the session's revocation, the
 * subject's revocation, the successor's record. ARGV: now (ms), the jti's remaining life (ms),
 * grace (ms), the session's issuance (µs), enforce (1/0), the session revocation's life (ms),
 * how long a rotation may still be in flight (ms), and a deadline on Redis's own clock (ms). A
 * subject's mark in seconds (before Rotor 0.2) is read as the last microsecond of that second, as
 * revokedUntilUs does. Answers the status, the rotation's time, and 1 when the record is still
 * unconfirmed.
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
 * writes nothing and answers an error. It is earlier than Rotor's command timeout.
 */
export const ROTATE = `
local clock = redis.call('TIME')
if tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) > tonumber(ARGV[8]) then
  return redis.error_reply('ROTORLATE the rotation started after its deadline; nothing was recorded')
end
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
    if ARGV[5] == '1' then redis.call('SET', KEYS[2], '1', 'PX', ARGV[6]) end
    return {'reused', '0', 0}
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'revoked', '0', 0} end
local revokedUntil = tonumber(redis.call('GET', KEYS[3]) or '-1')
if revokedUntil >= 0 and revokedUntil < 1e11 then revokedUntil = (revokedUntil + 1) * 1000000 - 1 end
if revokedUntil >= tonumber(ARGV[4]) then return {'revoked', '0', 0} end
if rotated then return {'grace', string.format('%.0f', at), unconfirmed and 1 or 0} end
redis.call('SET', KEYS[1], '-' .. ARGV[1], 'PX', ARGV[2])
return {'rotated', ARGV[1], 1}
`

/**
 * A subject's revocation only ever moves forward in time. KEYS: the subject's record. ARGV: until
 * (µs), TTL (ms). Written with %.0f: Lua would print a number this large in exponent form.
 */
export const REVOKE_SUBJECT = `
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < 1e11 then current = (current + 1) * 1000000 - 1 end
redis.call('SET', KEYS[1], string.format('%.0f', math.max(current, tonumber(ARGV[1]))), 'PX', ARGV[2])
return 1
`

/** Confirms a rotation Rotor got the answer of. KEYS: the jti's record. ARGV: its time (ms). */
export const CONFIRM = `
if redis.call('GET', KEYS[1]) == '-' .. ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL') end
return 1
`
