import { StoreUnavailableError } from '../src/errors.js'
import { COMMAND_TIMEOUT_MS, recycleIfSilent, type RedisClient, type RedisHealth } from './redis.js'
import type { Denylist, RotateInput, RotateOutcome, TokenRef, TokenState } from './denylist.js'
import { revokedUntilUs } from './subject-marks.js'
import type { StoreMarker } from './store-marker.js'

/**
 * The rotation decision, atomically. KEYS: the jti's record, the session's revocation, the
 * subject's revocation, the successor's record. ARGV: now (ms), the jti's remaining life (ms),
 * grace (ms), the session's issuance (µs), enforce (1/0), the session revocation's life (ms),
 * how long a rotation may still be in flight (ms), and a deadline on Redis's own clock (ms). A
 * subject's mark in seconds (before Rotor 0.2) is read as the last microsecond of that second, as
 * revokedUntilUs does. Answers the status, the rotation's time, and 1 when the record is still
 * unconfirmed.
 * The in-process store (denylist-memory.ts) makes the same decisions in the same order.
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
const ROTATE = `
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
const REVOKE_SUBJECT = `
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < 1e11 then current = (current + 1) * 1000000 - 1 end
redis.call('SET', KEYS[1], string.format('%.0f', math.max(current, tonumber(ARGV[1]))), 'PX', ARGV[2])
return 1
`

/** Confirms a rotation Rotor got the answer of. KEYS: the jti's record. ARGV: its time (ms). */
const CONFIRM = `
if redis.call('GET', KEYS[1]) == '-' .. ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL') end
return 1
`

/** A rotation must start within this much of being sent, or it writes nothing (see ROTATE). */
const ROTATION_DEADLINE_MS = COMMAND_TIMEOUT_MS * 0.75

/** The commands that write, by name: sent alone, or in a pipeline followed by WAIT. */
type WriteCommand = 'rotorRotate' | 'rotorRevokeSubject' | 'set'
type Send = (...args: Array<string | number>) => unknown
type Confirm = (key: string, atMs: string) => Promise<unknown>
interface Queue { exec: () => Promise<unknown> }

/**
 * The hash tag of a subject: the subject itself when it is safe there, else `~` and the base64url
 * of its UTF-16 code units. One subject, one well-formed tag, and no two subjects share one: a `}`
 * would end the tag early (a subject's keys in several Cluster slots), and Redis stores strings
 * as UTF-8, where a lone surrogate becomes U+FFFD, the same bytes as a subject that has U+FFFD.
 * Safe subjects never start with `~`, so the two forms never meet. (Rotor refuses ill-formed
 * subjects at issuance; tokens minted before could still carry one.)
 */
export function hashTag (sub: string): string {
  const safe = !sub.includes('{') && !sub.includes('}') && !sub.startsWith('~') && sub.isWellFormed()
  return safe ? sub : `~${Buffer.from(sub, 'utf16le').toString('base64url')}`
}

/** How many replicas must confirm each write (Redis WAIT), and for how long to wait for them. */
export interface Durability { replicas: number, timeoutMs: number }

/**
 * The Redis denylist. Keys are `<prefix>{<hashTag(sub)>}:<kind>:<id>`, kinds: j a rotated refresh or a
 * revoked access token, s a revoked session, u a subject's revocation, l an exchanged legacy
 * token. The hash tag puts every record of a subject in one cluster slot, so the rotation
 * script's keys always live together (and a WAIT behind a write goes to the node that took it).
 */
export class RedisDenylist implements Denylist {
  private readonly client: RedisClient
  private readonly prefix: string
  private readonly health: RedisHealth | null
  private readonly durability: Durability
  private readonly marker: StoreMarker
  /** How long a rotation Rotor sent may still get its answer: its command timeout and WAIT. */
  private readonly inFlightMs: number
  /** Redis's clock minus ours (ms), measured at every connection; deadlines are on Redis's clock. */
  private clockOffsetMs = 0

  constructor (client: RedisClient, prefix: string, health: RedisHealth, durability: Durability, marker: StoreMarker) {
    this.client = client
    this.prefix = prefix
    this.health = health
    this.durability = durability
    this.marker = marker
    this.inFlightMs = COMMAND_TIMEOUT_MS + (durability.replicas > 0 ? durability.timeoutMs : 0)
    client.defineCommand('rotorRotate', { numberOfKeys: 4, lua: ROTATE })
    client.defineCommand('rotorConfirm', { numberOfKeys: 1, lua: CONFIRM })
    client.defineCommand('rotorRevokeSubject', { numberOfKeys: 1, lua: REVOKE_SUBJECT })
  }

  /** The key of one record; exported through the class for tests that read TTLs back. */
  key (sub: string, kind: 'j' | 's' | 'u' | 'l', id = ''): string {
    return this.keyIn(`${this.prefix}{${hashTag(sub)}}`, kind, id)
  }

  /** A record's key under a subject's `<prefix>{<tag>}` (made once when an operation needs several). */
  private keyIn (subject: string, kind: 'j' | 's' | 'u' | 'l', id: string): string {
    return kind === 'u' ? `${subject}:u` : `${subject}:${kind}:${id}`
  }

  /** Measures Redis's clock against ours, to half a round trip. */
  async syncClock (): Promise<void> {
    const sent = Date.now()
    const [seconds, micros] = await this.guard(this.client.time())
    const received = Date.now()
    this.clockOffsetMs = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000) - (sent + received) / 2
  }

  async rotate (input: RotateInput): Promise<RotateOutcome> {
    const deadline = Math.floor(Date.now() + this.clockOffsetMs + ROTATION_DEADLINE_MS)
    const subject = `${this.prefix}{${hashTag(input.sub)}}`
    const record = this.keyIn(subject, 'j', input.jti)
    const [status, at, unconfirmed] = await this.write('rotorRotate',
      record, this.keyIn(subject, 's', input.sid), this.keyIn(subject, 'u', ''), this.keyIn(subject, 'j', input.childJti),
      input.nowMs, Math.max(1, Math.ceil(input.ttlMs)), input.graceMs, input.issuedUs, input.enforce ? 1 : 0,
      Math.max(1, Math.ceil(input.sessionTtlMs)), this.inFlightMs, deadline
    ) as [string, string, number]
    if (status !== 'rotated' && status !== 'grace') return { status: status === 'revoked' ? 'revoked' : 'reused' }
    // The answer reached Rotor: confirm it. Not awaited, nor its failure a 503: a rotation left
    // unconfirmed only lets its client's retry through (see ROTATE).
    if (unconfirmed === 1) (this.client as unknown as { rotorConfirm: Confirm }).rotorConfirm(record, at).catch(() => {})
    return { status, rotatedAtMs: Number(at) }
  }

  async state (ref: TokenRef): Promise<TokenState> {
    const subject = `${this.prefix}{${hashTag(ref.sub)}}`
    const [rotated, session, until] = await this.guard(this.client.mget(
      this.keyIn(subject, 'j', ref.jti), this.keyIn(subject, 's', ref.sid), this.keyIn(subject, 'u', '')
    ))
    if (session !== null || (until != null && revokedUntilUs(Number(until)) >= ref.issuedUs)) return 'revoked'
    return rotated === null ? 'active' : 'rotated'
  }

  async revokeToken (ref: TokenRef, ttlMs: number): Promise<void> {
    await this.write('set', this.key(ref.sub, 'j', ref.jti), '0', 'PX', Math.max(1, Math.ceil(ttlMs)))
  }

  async revokeSession (ref: TokenRef, ttlMs: number): Promise<void> {
    await this.write('set', this.key(ref.sub, 's', ref.sid), '1', 'PX', Math.max(1, Math.ceil(ttlMs)))
  }

  async revokeSubject (sub: string, untilUs: number, ttlMs: number): Promise<void> {
    await this.write('rotorRevokeSubject', this.key(sub, 'u'), untilUs, Math.max(1, Math.ceil(ttlMs)))
  }

  async consumeOnce (sub: string, id: string, ttlMs: number): Promise<boolean> {
    return await this.write('set', this.key(sub, 'l', id), '1', 'PX', Math.max(1, Math.ceil(ttlMs)), 'NX') === 'OK'
  }

  epoch (): number {
    return this.marker.epoch()
  }

  async ping (): Promise<void> {
    await this.guard(this.client.ping())
  }

  close (): void {}

  /**
   * Sends a write. With REDIS_WAIT_REPLICAS, a WAIT follows it in the same round trip on the same
   * connection, and a write fewer replicas confirmed is a 503: Redis took it, but a failover
   * could lose it, so nobody is told it is done (a retry within the grace window is safe).
   */
  private async write (command: WriteCommand, ...args: Array<string | number>): Promise<unknown> {
    const { replicas, timeoutMs } = this.durability
    if (replicas === 0) return this.written(await this.guard((this.client as unknown as Record<WriteCommand, Send>)[command](...args) as Promise<unknown>))
    const queue = this.client.pipeline() as unknown as Record<WriteCommand | 'wait', Send> & Queue
    queue[command](...args)
    queue.wait(replicas, timeoutMs)
    // A pipeline's exec answers one [error, reply] per command (null only for a discarded MULTI).
    const results = await this.guard(queue.exec()) as [[Error | null, unknown], [Error | null, number]]
    const failed = results.find(([error]) => error !== null)
    if (failed !== undefined) throw this.unavailable(failed[0])
    const [[, reply], [, confirmed]] = results
    const detail = `${confirmed} of ${replicas} Redis replicas confirmed a denylist write within ${timeoutMs} ms`
    this.health?.replicas(confirmed >= replicas, detail)
    if (confirmed < replicas) throw new StoreUnavailableError(`only ${detail} (REDIS_WAIT_REPLICAS)`)
    return this.written(reply)
  }

  /** A write went through: Redis has room again, if it had none. */
  private written<T> (reply: T): T {
    this.health?.outOfMemory(false, '')
    return reply
  }

  /** Every failure becomes a 503; a timeout on an open connection also marks Redis unreachable. */
  private async guard<T> (pending: Promise<T>): Promise<T> {
    try {
      const result = await pending
      if (this.health !== null && !this.health.reachable) this.health.up()
      return result
    } catch (error) {
      throw this.unavailable(error)
    }
  }

  /**
   * A failed command as the 503 it becomes. Redis out of memory answers, and says so: that is
   * reported as such; anything else marks Redis unreachable (each said once per change).
   */
  private unavailable (error: unknown): StoreUnavailableError {
    const reason = (error as Error).message
    if (reason.startsWith('OOM ')) this.health?.outOfMemory(true, reason)
    else this.health?.down(reason)
    recycleIfSilent(this.client, error)
    return new StoreUnavailableError(reason)
  }
}
