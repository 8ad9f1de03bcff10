import { revokedUntilUs } from './subject-marks.js'
import type { Denylist, RotateInput, RotateOutcome, TokenRef, TokenState } from './types.js'

interface Entry { value: number, expiresAtMs: number }

const SWEEP_INTERVAL_MS = 60_000

/**
 * The in-process denylist, for one instance with no Redis. Same keys, same TTLs and the same
 * decisions as the Redis script; JavaScript's single thread makes each call atomic, and its
 * answers cannot be lost on the way, so no rotation here is ever left unconfirmed.
 */
export class MemoryDenylist implements Denylist {
  private readonly entries = new Map<string, Entry>()
  private readonly sweeper: NodeJS.Timeout

  constructor () {
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
    const rotatedAt = this.get(`j:${input.jti}`, now)
    if (rotatedAt !== null) {
      const inWindow = input.graceMs > 0 && now - rotatedAt <= input.graceMs && this.get(`j:${input.childJti}`, now) === null
      if (!inWindow) {
        if (input.enforce) this.set(`s:${input.sid}`, 1, now + input.sessionTtlMs)
        return { status: 'reused' }
      }
    }
    if (this.isRevoked(input, now)) return { status: 'revoked' }
    if (rotatedAt !== null) return { status: 'grace', rotatedAtMs: rotatedAt }
    this.set(`j:${input.jti}`, now, now + input.ttlMs)
    return { status: 'rotated', rotatedAtMs: now }
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
  }

  async revokeSubject (sub: string, untilUs: number, ttlMs: number): Promise<void> {
    this.set(`u:${sub}`, Math.max(untilUs, this.get(`u:${sub}`, Date.now()) ?? 0), Date.now() + ttlMs)
  }

  async consumeOnce (sub: string, id: string, ttlMs: number): Promise<boolean> {
    const now = Date.now()
    if (this.get(`l:${sub}:${id}`, now) !== null) return false
    this.set(`l:${sub}:${id}`, 1, now + ttlMs)
    return true
  }

  epoch (): number {
    return 0
  }

  async ping (): Promise<void> {}

  close (): void {
    clearInterval(this.sweeper)
  }

  private isRevoked (ref: TokenRef, now: number): boolean {
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
