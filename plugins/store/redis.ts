import { StoreUnavailableError } from '../errors.js'
import { COMMAND_TIMEOUT_MS, recycleIfSilent, type RedisClient, type RedisHealth } from '../redis.js'
import type { StoreMarker } from './marker.js'
import { CONFIRM, REVOKE_SUBJECT, ROTATE } from './scripts.js'
import { revokedUntilUs } from './subject-marks.js'
import type { Denylist, RotateInput, RotateOutcome, TokenRef, TokenState } from './types.js'

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
