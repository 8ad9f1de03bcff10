import { revokedUntilUs } from './subject-marks.js'
import type { Denylist, Evicted, RotateInput, RotateOutcome, SessionEntry, SessionIndexSettings, TokenRef, TokenState } from './types.js'

interface Entry { value: number, expiresAtMs: number }

const SWEEP_INTERVAL_MS = 60_000

/** The settings of the index when none are given (tests): the contract's defaults. */
const DEFAULT_INDEX: SessionIndexSettings = { maxPerSubject: 100, leewaySec: 0, accessOverhangSec: 0 }

/**
 * The in-process denylist, for one instance with no Redis. Same keys, same TTLs and the same
 * decisions as the Redis script; JavaScript's single thread makes each call atomic, and its
 * answers cannot be lost on the way, so no rotation here is ever left unconfirmed.
 */
export class MemoryDenylist implements Denylist {
  private readonly entries = new Map<string, Entry>()
  /** The session index: subject -> sid -> entry. */
  private readonly index = new Map<string, Map<string, SessionEntry>>()
  private readonly settings: SessionIndexSettings
  private readonly sweeper: NodeJS.Timeout

  constructor (settings: SessionIndexSettings = DEFAULT_INDEX) {
    this.settings = settings
    this.sweeper = setInterval(() => { this.sweep(Date.now()) }, SWEEP_INTERVAL_MS)
    this.sweeper.unref()
  }

  /** Live entries, for tests and diagnostics. */
  get size (): number {
    this.sweep(Date.now())
    return this.entries.size
  }

  async rotate (input: RotateInput): Promise<RotateOutcome> {
    const now = input.nowMs
    if (input.proof !== undefined && !this.once(input.sub, input.proof.id, now, input.proof.ttlMs)) return { status: 'replayed' }
    const rotatedAt = this.get(`j:${input.jti}`, now)
    if (rotatedAt !== null) {
      const inWindow = input.graceMs > 0 && now - rotatedAt <= input.graceMs && this.get(`j:${input.childJti}`, now) === null
      if (!inWindow) {
        if (input.enforce) {
          this.set(`s:${input.sid}`, 1, now + input.sessionTtlMs)
          this.index.get(input.sub)?.delete(input.sid)
        }
        return { status: 'reused' }
      }
    }
    if (this.isRevoked(input, now)) {
      this.index.get(input.sub)?.delete(input.sid)
      return { status: 'revoked' }
    }
    if (rotatedAt !== null) return { status: 'grace', rotatedAtMs: rotatedAt, evicted: [] }
    this.set(`j:${input.jti}`, now, now + input.ttlMs)
    return { status: 'rotated', rotatedAtMs: now, evicted: this.list(input.sub, input.entry, now) }
  }

  async state (ref: TokenRef): Promise<TokenState> {
    const now = Date.now()
    if (this.isRevoked(ref, now)) return 'revoked'
    return this.get(`j:${ref.jti}`, now) === null ? 'active' : 'rotated'
  }

  async revokeToken (ref: TokenRef, ttlMs: number): Promise<void> {
    this.set(`j:${ref.jti}`, 0, Date.now() + ttlMs)
  }

  async revokeSession (ref: TokenRef, ttlMs: number): Promise<void> {
    this.set(`s:${ref.sid}`, 1, Date.now() + ttlMs)
    this.index.get(ref.sub)?.delete(ref.sid)
  }

  async revokeSubject (sub: string, untilUs: number, ttlMs: number): Promise<void> {
    this.set(`u:${sub}`, Math.max(untilUs, this.get(`u:${sub}`, Date.now()) ?? 0), Date.now() + ttlMs)
    this.live(sub, Date.now())
  }

  async recordSession (sub: string, entry: SessionEntry, nowMs: number): Promise<Evicted> {
    return this.list(sub, entry, nowMs)
  }

  async listSessions (sub: string, nowMs: number): Promise<SessionEntry[]> {
    return [...this.live(sub, nowMs).values()].sort((a, b) => b.createdUs - a.createdUs)
  }

  async endSessions (sub: string, which: { sids: string[] } | { except: string }, nowMs: number): Promise<string[]> {
    const sessions = this.live(sub, nowMs)
    const ended = [...sessions.values()].filter((entry) => 'sids' in which ? which.sids.includes(entry.sid) : entry.sid !== which.except)
    for (const entry of ended) this.finish(sessions, entry)
    return ended.map((entry) => entry.sid)
  }

  async consumeOnce (sub: string, id: string, ttlMs: number): Promise<boolean> {
    return this.once(sub, id, Date.now(), ttlMs)
  }

  epoch (): number {
    return 0
  }

  async ping (): Promise<void> {}

  close (): void {
    clearInterval(this.sweeper)
  }

  private once (sub: string, id: string, now: number, ttlMs: number): boolean {
    if (this.get(`l:${sub}:${id}`, now) !== null) return false
    this.set(`l:${sub}:${id}`, 1, now + ttlMs)
    return true
  }

  /** The subject's live sessions: what expired or was revoked leaves the index as it is read. */
  private live (sub: string, now: number): Map<string, SessionEntry> {
    const sessions = this.index.get(sub) ?? new Map<string, SessionEntry>()
    for (const [sid, entry] of sessions) {
      const expired = (entry.expiresAt + this.settings.leewaySec) * 1000 < now
      if (expired || this.isRevoked({ sub, sid, issuedUs: entry.createdUs }, now)) sessions.delete(sid)
    }
    if (sessions.size === 0) this.index.delete(sub)
    return sessions
  }

  /** Lists a session (or updates it: a rotation knows no device, the one given at issuance stays); see INDEX in scripts.ts. */
  private list (sub: string, entry: SessionEntry, now: number): Evicted {
    const sessions = this.live(sub, now)
    const listed = sessions.get(entry.sid)
    sessions.set(entry.sid, { ...entry, device: entry.device ?? listed?.device ?? null })
    this.index.set(sub, sessions)
    const evicted: Evicted = []
    if (listed !== undefined) return evicted
    const others = [...sessions.values()].filter((other) => other.sid !== entry.sid).sort((a, b) => a.createdUs - b.createdUs)
    for (const oldest of others) {
      if (sessions.size <= this.settings.maxPerSubject) break
      this.finish(sessions, oldest)
      evicted.push(oldest.sid)
    }
    return evicted
  }

  /** Revokes a listed session for as long as its tokens live, and unlists it (an emptied subject goes at its next read). */
  private finish (sessions: Map<string, SessionEntry>, entry: SessionEntry): void {
    const { leewaySec, accessOverhangSec } = this.settings
    this.set(`s:${entry.sid}`, 1, (entry.expiresAt + leewaySec + accessOverhangSec) * 1000)
    sessions.delete(entry.sid)
  }

  private isRevoked (ref: Pick<TokenRef, 'sub' | 'sid' | 'issuedUs'>, now: number): boolean {
    const until = this.get(`u:${ref.sub}`, now)
    return this.get(`s:${ref.sid}`, now) !== null || (until !== null && revokedUntilUs(until) >= ref.issuedUs)
  }

  private get (key: string, now: number): number | null {
    const entry = this.entries.get(key)
    if (entry === undefined) return null
    // As Redis does: a key lives through its expiry millisecond (a token verifies through its exp).
    if (entry.expiresAtMs < now) {
      this.entries.delete(key)
      return null
    }
    return entry.value
  }

  private set (key: string, value: number, expiresAtMs: number): void {
    this.entries.set(key, { value, expiresAtMs })
  }

  private sweep (now: number): void {
    for (const [key, entry] of this.entries) {
      if (entry.expiresAtMs < now) this.entries.delete(key)
    }
  }
}
