import { Cluster } from 'ioredis'
import { StoreUnavailableError } from '../errors.js'
import { COMMAND_TIMEOUT_MS, groupBySlot, recycleIfSilent, SIDE_COMMAND_TIMEOUT_MS, type RedisClient, type RedisHealth } from '../redis.js'
import type { StoreMarker } from './marker.js'
import { CONFIRM, END_SESSIONS, LIST_SESSIONS, RECORD_SESSION, REVOKE_SESSION, REVOKE_SUBJECT, ROTATE, ROTATE_COUNTED, ROTATE_PROVEN, ROTATE_PROVEN_COUNTED } from './scripts.js'
import { revokedUntilUs } from './subject-marks.js'
import type { Denylist, Evicted, RotateInput, RotateOutcome, SessionEntry, SessionIndexSettings, TokenRef, TokenState } from './types.js'

/** A rotation must start within this much of being sent, or it writes nothing (see ROTATE). */
const ROTATION_DEADLINE_MS = COMMAND_TIMEOUT_MS * 0.75
/** The same for a session listed at issuance, over the side connection. */
const RECORD_DEADLINE_MS = SIDE_COMMAND_TIMEOUT_MS * 0.75

/** A script that started past its deadline: it recorded nothing, and Redis answered (so Redis is not reported down). */
class LateScriptError extends StoreUnavailableError {}

/** The rotation's scripts: plain, for a session bound to a DPoP key, and each counting the request's rate-limit budget too. */
const ROTATE_COMMANDS = ['rotorRotate', 'rotorRotateProven', 'rotorRotateCounted', 'rotorRotateProvenCounted'] as const
type RotateCommand = typeof ROTATE_COMMANDS[number]
/** The commands that write, by name: sent alone, or in a pipeline followed by WAIT. */
type WriteCommand = RotateCommand | 'rotorRevokeSubject' | 'rotorRevokeSession' | 'rotorEndSessions' | 'set'
type Send = (...args: Array<string | number>) => unknown
type Confirm = (keys: number, ...keysThenTimes: string[]) => Promise<unknown>
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
 * An index entry as the hash holds it (see INDEX in scripts.ts): `<issued µs> <refreshed − issued
 * s> <expires − refreshed s> <client_id>`; the device label follows a newline, written by the
 * script (which keeps the one given at issuance). Short, so a subject's hash stays compact.
 */
function entryHead (entry: SessionEntry): string {
  const issuedSec = Math.floor(entry.createdUs / 1_000_000)
  return `${entry.createdUs} ${entry.lastRefreshedAt - issuedSec} ${entry.expiresAt - entry.lastRefreshedAt} ${entry.clientId ?? ''}`
}

function entryOf (sid: string, stored: string): SessionEntry {
  const newline = stored.indexOf('\n')
  const [issued = '0', refreshed = '0', expires = '0', clientId = ''] = (newline === -1 ? stored : stored.slice(0, newline)).split(' ')
  const createdUs = Number(issued)
  const lastRefreshedAt = Math.floor(createdUs / 1_000_000) + Number(refreshed)
  return {
    sid,
    createdUs,
    lastRefreshedAt,
    expiresAt: lastRefreshedAt + Number(expires),
    clientId: clientId === '' ? null : clientId,
    device: newline === -1 ? null : stored.slice(newline + 1)
  }
}

/**
 * The Redis denylist. Keys are `<prefix>{<hashTag(sub)>}:<kind>:<id>`, kinds: j a rotated refresh or a
 * revoked access token, s a revoked session, u a subject's revocation, l a one-time id (an
 * exchanged legacy token's jti, a DPoP proof's `dpop.<hash>`); and the subject's session index, `<prefix>{<tag>}:sessions` and `:sessions:by-expiry`
 * (see INDEX in scripts.ts). The hash tag puts every record of a subject
 * in one cluster slot, so the rotation script's keys always live together (and a WAIT behind a
 * write goes to the node that took it).
 */
export class RedisDenylist implements Denylist {
  private readonly client: RedisClient
  private readonly prefix: string
  private readonly health: RedisHealth | null
  private readonly durability: Durability
  private readonly marker: StoreMarker
  private readonly sessions: SessionIndexSettings
  /** The redis plugin's side connection (auto-pipelined, quick to give up): issuance lists its sessions over it. */
  private readonly side: RedisClient
  /** How long a rotation Rotor sent may still get its answer: its command timeout and WAIT. */
  private readonly inFlightMs: number
  /** Redis's clock minus ours (ms), measured at every connection; deadlines are on Redis's clock. */
  private clockOffsetMs = 0
  /** Rotations answered in this turn of the event loop, confirmed together at its end (record key → its time). */
  private confirming: Map<string, string> | null = null

  constructor (
    client: RedisClient, prefix: string, health: RedisHealth, durability: Durability, marker: StoreMarker, sessions: SessionIndexSettings, side: RedisClient
  ) {
    this.client = client
    this.side = side
    this.prefix = prefix
    this.health = health
    this.durability = durability
    this.marker = marker
    this.sessions = sessions
    this.inFlightMs = COMMAND_TIMEOUT_MS + (durability.replicas > 0 ? durability.timeoutMs : 0)
    client.defineCommand('rotorRotate', { numberOfKeys: 6, lua: ROTATE })
    client.defineCommand('rotorRotateProven', { numberOfKeys: 7, lua: ROTATE_PROVEN })
    client.defineCommand('rotorRotateCounted', { numberOfKeys: 7, lua: ROTATE_COUNTED })
    client.defineCommand('rotorRotateProvenCounted', { numberOfKeys: 8, lua: ROTATE_PROVEN_COUNTED })
    client.defineCommand('rotorRevokeSubject', { numberOfKeys: 3, lua: REVOKE_SUBJECT })
    client.defineCommand('rotorRevokeSession', { numberOfKeys: 3, lua: REVOKE_SESSION })
    side.defineCommand('rotorRecordSession', { numberOfKeys: 3, lua: RECORD_SESSION })
    // As many keys as rotations to confirm (one slot's, on a Cluster): the count comes first.
    side.defineCommand('rotorConfirm', { lua: CONFIRM })
    client.defineCommand('rotorListSessions', { numberOfKeys: 3, lua: LIST_SESSIONS })
    client.defineCommand('rotorEndSessions', { numberOfKeys: 3, lua: END_SESSIONS })
  }

  /** The key of one record; exported through the class for tests that read TTLs back. */
  key (sub: string, kind: 'j' | 's' | 'u' | 'l', id = ''): string {
    return this.keyIn(`${this.prefix}{${hashTag(sub)}}`, kind, id)
  }

  /** The two keys of a subject's session index, under its `<prefix>{<tag>}`. */
  indexKeys (sub: string): [string, string] {
    return this.indexKeysIn(`${this.prefix}{${hashTag(sub)}}`)
  }

  private indexKeysIn (subject: string): [string, string] {
    return [`${subject}:sessions`, `${subject}:sessions:by-expiry`]
  }

  /** The arguments every index script starts with: its keys, the subject's revocation, then the subject, now and the settings. */
  private indexArgs (sub: string, nowMs: number): Array<string | number> {
    const subject = `${this.prefix}{${hashTag(sub)}}`
    const { leewaySec, accessOverhangSec } = this.sessions
    return [...this.indexKeysIn(subject), this.keyIn(subject, 'u', ''), subject, nowMs, leewaySec, accessOverhangSec]
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
    try {
      return await this.rotateOnce(input)
    } catch (error) {
      // The script started past its deadline and recorded nothing, yet its answer came before
      // Rotor gave up: Rotor's process stalled (or Redis did) between sending it and Redis running
      // it. Once more, with a new deadline; a second late start is a 503.
      if (!(error instanceof LateScriptError)) throw error
      return await this.rotateOnce(input)
    }
  }

  private async rotateOnce (input: RotateInput): Promise<RotateOutcome> {
    const deadline = Math.floor(Date.now() + this.clockOffsetMs + ROTATION_DEADLINE_MS)
    const subject = `${this.prefix}{${hashTag(input.sub)}}`
    const record = this.keyIn(subject, 'j', input.jti)
    const { entry, proof, budget } = input
    const { maxPerSubject, leewaySec, accessOverhangSec } = this.sessions
    const keys = [record, this.keyIn(subject, 's', input.sid), this.keyIn(subject, 'u', ''), this.keyIn(subject, 'j', input.childJti), ...this.indexKeysIn(subject)]
    const args: Array<string | number> = [
      input.nowMs, Math.max(1, Math.ceil(input.ttlMs)), input.graceMs, input.issuedUs, input.enforce ? 1 : 0,
      Math.max(1, Math.ceil(input.sessionTtlMs)), this.inFlightMs, deadline,
      subject, input.sid, entryHead(entry), entry.expiresAt, maxPerSubject, leewaySec, accessOverhangSec
    ]
    if (proof !== undefined) {
      keys.push(this.keyIn(subject, 'l', proof.id))
      args.push(Math.max(1, Math.ceil(proof.ttlMs)))
    }
    if (budget !== undefined) {
      keys.push(budget.key)
      args.push(budget.max, budget.windowMs)
    }
    const [status, at, unconfirmed, evicted, current, ttlMs] = await this.write(ROTATE_COMMANDS[(proof === undefined ? 0 : 1) + (budget === undefined ? 0 : 2)]!, ...keys, ...args) as
      [string, string, number, Evicted, number?, number?]
    const spent = budget === undefined ? undefined : { current: current!, ttlMs: ttlMs! }
    if (status === 'limited') return { status, spent: spent! }
    if (status !== 'rotated' && status !== 'grace') return { status: status as 'revoked' | 'reused' | 'replayed', spent }
    // The answer reached Rotor: confirm it, with the other rotations of this turn, over the side connection.
    if (unconfirmed === 1) this.confirm(record, at)
    return { status, rotatedAtMs: Number(at), evicted, spent }
  }

  /**
   * Confirms a rotation whose answer reached Rotor, together with every other one of this turn
   * of the event loop: one command for all (on a Cluster, one per hash slot), sent when the turn's
   * I/O is done. Not awaited, nor its failure a 503: a rotation left unconfirmed only lets its
   * client's retry through (see ROTATE). A command per rotation was a tenth of a refresh's CPU.
   */
  private confirm (record: string, atMs: string): void {
    if (this.confirming === null) {
      const batch = new Map<string, string>()
      this.confirming = batch
      setImmediate(() => {
        this.confirming = null
        this.sendConfirms(batch)
      })
    }
    this.confirming.set(record, atMs)
  }

  private sendConfirms (batch: Map<string, string>): void {
    const send = (this.side as unknown as { rotorConfirm: Confirm }).rotorConfirm.bind(this.side)
    for (const keys of groupBySlot([...batch.keys()], (key) => key, this.side instanceof Cluster)) {
      send(keys.length, ...keys, ...keys.map((key) => batch.get(key)!)).catch(() => {})
    }
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
    await this.write('rotorRevokeSession', this.key(ref.sub, 's', ref.sid), ...this.indexKeys(ref.sub),
      Math.max(1, Math.ceil(ttlMs)), ref.sid, this.sessions.leewaySec)
  }

  async revokeSubject (sub: string, untilUs: number, ttlMs: number): Promise<void> {
    await this.write('rotorRevokeSubject', this.key(sub, 'u'), ...this.indexKeys(sub),
      untilUs, Math.max(1, Math.ceil(ttlMs)), `${this.prefix}{${hashTag(sub)}}`, Date.now(), this.sessions.leewaySec)
  }

  /**
   * Over the side connection: issuance waits for it only briefly (a write that reaches Redis
   * after Rotor gave up does nothing: see RECORD_SESSION), and many issues share one write. No
   * WAIT for replicas (the index is kept best-effort at issuance: see src/sessions.ts),
   * and its failures say nothing of the store's health (its own connection does).
   */
  async recordSession (sub: string, entry: SessionEntry, nowMs: number): Promise<Evicted> {
    const send = (this.side as unknown as { rotorRecordSession: Send }).rotorRecordSession
    try {
      return await (send.call(this.side, ...this.indexArgs(sub, nowMs),
        entry.sid, entryHead(entry), entry.device ?? '', entry.expiresAt, this.sessions.maxPerSubject,
        Math.floor(Date.now() + this.clockOffsetMs + RECORD_DEADLINE_MS)) as Promise<Evicted>)
    } catch (error) {
      throw new StoreUnavailableError((error as Error).message)
    }
  }

  async listSessions (sub: string, nowMs: number): Promise<SessionEntry[]> {
    const send = (this.client as unknown as { rotorListSessions: Send }).rotorListSessions
    const flat = await this.guard(send.call(this.client, ...this.indexArgs(sub, nowMs)) as Promise<string[]>)
    const sessions: SessionEntry[] = []
    for (let i = 0; i + 1 < flat.length; i += 2) sessions.push(entryOf(flat[i] as string, flat[i + 1] as string))
    return sessions
  }

  async endSessions (sub: string, which: { sids: string[] } | { except: string }, nowMs: number): Promise<string[]> {
    const selection = 'sids' in which ? ['only', ...which.sids] : ['except', which.except]
    return await this.write('rotorEndSessions', ...this.indexArgs(sub, nowMs), ...selection) as string[]
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
    if (reason.startsWith('ROTORLATE ')) return new LateScriptError(reason)
    if (reason.startsWith('OOM ')) this.health?.outOfMemory(true, reason)
    else this.health?.down(reason)
    recycleIfSilent(this.client, error)
    return new StoreUnavailableError(reason)
  }
}
