import { StoreUnavailableError } from '../src/errors.js'
import type { RedisClient } from './redis.js'
import type { Denylist, RotateInput, RotateOutcome, TokenRef, TokenState } from './denylist.js'

/**
 * The rotation decision, atomically. KEYS: the jti's record, the session's revocation, the
 * subject's revocation, the successor's record. ARGV: now (ms), the jti's remaining life (ms),
 * grace (ms), auth_time (s), enforce (1/0), the session revocation's life (ms).
 * The in-process store (denylist-memory.ts) makes the same decisions in the same order.
 */
const ROTATE = `
local rotated = redis.call('GET', KEYS[1])
local now = tonumber(ARGV[1])
if rotated then
  local grace = tonumber(ARGV[3])
  if grace == 0 or now - tonumber(rotated) > grace or redis.call('EXISTS', KEYS[4]) == 1 then
    if ARGV[5] == '1' then redis.call('SET', KEYS[2], '1', 'PX', ARGV[6]) end
    return {'reused', rotated}
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'revoked', '0'} end
local revokedUntil = redis.call('GET', KEYS[3])
if revokedUntil and tonumber(revokedUntil) >= tonumber(ARGV[4]) then return {'revoked', '0'} end
if rotated then return {'grace', rotated} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {'rotated', ARGV[1]}
`

/** A subject's revocation only ever moves forward in time. KEYS: the subject's record. ARGV: until (s), TTL (ms). */
const REVOKE_SUBJECT = `
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
redis.call('SET', KEYS[1], math.max(current, tonumber(ARGV[1])), 'PX', ARGV[2])
return 1
`

type Rotate = (j: string, s: string, u: string, child: string, ...argv: Array<string | number>) => Promise<[string, string]>
type RevokeSubject = (u: string, until: number, ttl: number) => Promise<number>

/**
 * The Redis denylist. Keys are `<prefix>{<sub>}:<kind>:<id>`: the hash tag puts every record of a
 * subject in one cluster slot, so the rotation script's keys always live together.
 */
export class RedisDenylist implements Denylist {
  private readonly client: RedisClient
  private readonly prefix: string
  private readonly rotateScript: Rotate
  private readonly revokeSubjectScript: RevokeSubject

  constructor (client: RedisClient, prefix: string) {
    this.client = client
    this.prefix = prefix
    client.defineCommand('rotorRotate', { numberOfKeys: 4, lua: ROTATE })
    client.defineCommand('rotorRevokeSubject', { numberOfKeys: 1, lua: REVOKE_SUBJECT })
    const commands = client as unknown as { rotorRotate: Rotate, rotorRevokeSubject: RevokeSubject }
    this.rotateScript = commands.rotorRotate.bind(client)
    this.revokeSubjectScript = commands.rotorRevokeSubject.bind(client)
  }

  /** The key of one record; exported through the class for tests that read TTLs back. */
  key (sub: string, kind: 'j' | 's' | 'u', id = ''): string {
    return kind === 'u' ? `${this.prefix}{${sub}}:u` : `${this.prefix}{${sub}}:${kind}:${id}`
  }

  async rotate (input: RotateInput): Promise<RotateOutcome> {
    const [status, at] = await guard(this.rotateScript(
      this.key(input.sub, 'j', input.jti), this.key(input.sub, 's', input.sid), this.key(input.sub, 'u'),
      this.key(input.sub, 'j', input.childJti),
      input.nowMs, Math.max(1, Math.ceil(input.ttlMs)), input.graceMs, input.authTime, input.enforce ? 1 : 0,
      Math.max(1, Math.ceil(input.sessionTtlMs))
    ))
    if (status === 'rotated' || status === 'grace') return { status, rotatedAtMs: Number(at) }
    return { status: status === 'revoked' ? 'revoked' : 'reused' }
  }

  async state (ref: TokenRef): Promise<TokenState> {
    const [rotated, session, until] = await guard(this.client.mget(
      this.key(ref.sub, 'j', ref.jti), this.key(ref.sub, 's', ref.sid), this.key(ref.sub, 'u')
    ))
    if (session !== null || (until != null && Number(until) >= ref.authTime)) return 'revoked'
    return rotated === null ? 'active' : 'rotated'
  }

  async revokeToken (ref: TokenRef, ttlMs: number): Promise<void> {
    await guard(this.client.set(this.key(ref.sub, 'j', ref.jti), '0', 'PX', Math.max(1, Math.ceil(ttlMs))))
  }

  async revokeSession (ref: TokenRef, ttlMs: number): Promise<void> {
    await guard(this.client.set(this.key(ref.sub, 's', ref.sid), '1', 'PX', Math.max(1, Math.ceil(ttlMs))))
  }

  async revokeSubject (sub: string, untilSec: number, ttlMs: number): Promise<void> {
    await guard(this.revokeSubjectScript(this.key(sub, 'u'), untilSec, Math.max(1, Math.ceil(ttlMs))))
  }

  async ping (): Promise<void> {
    await guard(this.client.ping())
  }

  close (): void {}
}

async function guard<T> (pending: Promise<T>): Promise<T> {
  try {
    return await pending
  } catch (error) {
    throw new StoreUnavailableError((error as Error).message)
  }
}
