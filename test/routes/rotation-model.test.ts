import { randomBytes } from 'node:crypto'
import { test } from 'tap'
import fc from 'fast-check'
import type { FastifyInstance } from 'fastify'
import type { Response } from 'light-my-request'
import { RedisDenylist } from '../../plugins/store/redis.js'
import { API_KEY, build, decodeJwt, type Pair } from '../support/app.js'

/*
 * The rotation state machine against a model.
 *
 * The real app (routes, src/rotation.ts with its derived successors, the real store) runs under a
 * simulated clock: Date.now is frozen at a value the test moves forward, so expiry, the grace
 * window and same-second effects are exact and no test sleeps. A reference model (below) says what
 * every answer must be; on top of that, three invariants are checked after every command:
 *   1. per session, at most one refresh token is live (introspects active): a rotated token in
 *      its grace window is not live, it can only get the answer it already got;
 *   2. once a session is revoked (revoke, subject revoke, reuse detection), no refresh of any of
 *      its tokens succeeds and none of them introspects active;
 *   3. a refresh answers 200 or 401 with one of the contract's token codes; every other call 200.
 * Besides: every 200 for one presented token is the same refresh token (retries within the window
 * get the first rotation's answer, however many there are and in whatever order); and the session
 * index lists exactly the sessions alive in the model, newest first, each with its latest refresh
 * token's expiry and rotation time. Each subject holds at most MAX_SESSIONS sessions: an issue
 * past it revokes the subject's oldest live ones (the model does the same).
 *
 * Redis keeps its TTLs on its own, real clock, while the simulated clock stands still between
 * commands. Records can only outlive the simulated time they are meant for, never the reverse,
 * except a jti recorded with little life left: so with Redis, a rotation in a token's last
 * REDIS_SLACK_MS is not attempted, nor an issue that would end (MAX_SESSIONS) a session that
 * close to its end (the in-process store covers those last moments exactly).
 * The rotation and listing scripts' deadlines are on Redis's clock: the store's offset is
 * re-measured before every refresh and issue, as the app does at every connection (the simulated
 * clock jumps back at the start of each run).
 */

const ACCESS_TTL_S = 30
const REFRESH_TTL_S = 60
const REDIS_SLACK_MS = 5_000
const MAX_SESSIONS = 2
const NUM_RUNS = Number(process.env['ROTOR_MODEL_RUNS'] ?? 80)
const SEED = Number(process.env['ROTOR_MODEL_SEED'] ?? 20240611)

const REFUSALS = new Set(['token_reused', 'token_revoked', 'token_expired', 'token_invalid'])

// ---------------------------------------------------------------------------------------------
// Commands

type Command =
  | { kind: 'issue', sub: number }
  | { kind: 'refresh', who: 'user' | 'thief', s: number }
  | { kind: 'concurrent', who: 'user' | 'thief', s: number, n: number }
  | { kind: 'steal', s: number }
  | { kind: 'retry', s: number }
  | { kind: 'replay', s: number, t: number }
  | { kind: 'revoke', s: number, t: number }
  | { kind: 'revokeAccess', s: number }
  | { kind: 'revokeSubject', sub: number }
  | { kind: 'advance', ms: number }
  | { kind: 'toExpiry', s: number, t: number, delta: number }
  | { kind: 'toGraceEnd', s: number, delta: number }

const index = fc.nat({ max: 7 })
const who = fc.constantFrom('user' as const, 'thief' as const)

const commandArb: fc.Arbitrary<Command> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('issue' as const), sub: fc.nat({ max: 1 }) }) },
  { weight: 7, arbitrary: fc.record({ kind: fc.constant('refresh' as const), who, s: index }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('concurrent' as const), who, s: index, n: fc.integer({ min: 2, max: 4 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('steal' as const), s: index }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('retry' as const), s: index }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('replay' as const), s: index, t: index }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('revoke' as const), s: index, t: index }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('revokeAccess' as const), s: index }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('revokeSubject' as const), sub: fc.nat({ max: 1 }) }) },
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('advance' as const),
      // within the window; around its end; around a token's life
      ms: fc.oneof(fc.integer({ min: 0, max: 3_000 }), fc.integer({ min: 8_000, max: 12_000 }), fc.integer({ min: 55_000, max: 65_000 }))
    })
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('toExpiry' as const), s: index, t: index, delta: fc.integer({ min: -1, max: 1 }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('toGraceEnd' as const), s: index, delta: fc.integer({ min: 0, max: 1 }) }) }
)

/** One run: where in its second the simulated clock starts (0: on a whole second), and the commands. */
const runArb = fc.record({
  phaseMs: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 999 })),
  commands: fc.array(commandArb, { minLength: 1, maxLength: 25 })
})

// ---------------------------------------------------------------------------------------------
// The model
//
// Per session: every refresh token it was ever answered, the rotations the store recorded (the
// presented jti -> when, and the successor answered) and whether its session record is set; per
// subject, the sessions its revocations ended (all issued before each). A refresh of token T at `now`:
//   now past exp (a token verifies up to and including exp * 1000)          -> token_expired
//   T rotated, and not (grace > 0, now - rotated at <= grace, successor of T
//     not rotated itself): a reuse                                          -> token_reused, session revoked
//   session revoked, or subject revoked after the session was issued        -> token_revoked
//   T rotated, within its window                                            -> 200, the first answer, byte for byte
//   otherwise                                                               -> 200, a new successor (new jti, same
//     sid, sub and auth_time, iat now, exp iat + TTL), and T is recorded
// (the order of the Lua script: reuse is decided before revocation). A record lasts as long as what it
// refuses still verifies: the contract's "TTL equal to that token's remaining lifetime".
// Clients: the user holds what it was answered last; a thief may copy the user's token and refresh
// on its own; a retry sends again what the user sent last; a replay sends any token of the session.

interface Tok { token: string, jti: string, iat: number, exp: number }

/** A rotation the store recorded: when, and the successor it answered (null until observed). */
interface Rotation { atMs: number, child: Tok | null }

interface Session {
  sub: string
  sid: string
  authTime: number
  /** Every refresh token of the session ever answered, in order. */
  tokens: Tok[]
  rotations: Map<string, Rotation>
  /** The session record of the store (revoke or reuse). */
  revoked: boolean
  user: Tok
  thief: Tok | null
  /** The token the user presented last (what a retried request sends again). */
  presented: Tok | null
  access: string
}

type Expected = '200' | 'token_reused' | 'token_revoked' | 'token_expired' | 'token_invalid'

function tokOf (token: string): Tok {
  const { payload } = decodeJwt(token)
  return { token, jti: String(payload['jti']), iat: Number(payload['iat']), exp: Number(payload['exp']) }
}

const realDateNow = Date.now.bind(Date)

/** The simulated clock: while installed, Date.now (hence the app, fast-jwt and the store) reads `now`. */
class Clock {
  now = 0
  install (): void { Date.now = () => this.now }
  uninstall (): void { Date.now = realDateNow }
  realNow (): number { return realDateNow() }
}

interface Settings { store: 'memory' | 'redis', graceMs: number }

class ModelRun {
  readonly sessions: Session[] = []
  /** Sessions a subject-wide revocation ended: every one issued before it, none after (contract). */
  readonly subjectRevoked = new Set<string>()
  /** Sessions an action ended, as observed (invariant 2), independent of the model's predictions. */
  readonly ended = new Set<string>()
  /** Every 200 given for a presented jti: they must all be one and the same refresh token. */
  readonly answered = new Map<string, string>()
  readonly log: string[] = []
  private readonly app: FastifyInstance
  private readonly clock: Clock
  private readonly settings: Settings
  private readonly subs: [string, string]
  private readonly startMs: number

  constructor (app: FastifyInstance, clock: Clock, settings: Settings, tag: string) {
    this.app = app
    this.clock = clock
    this.settings = settings
    this.subs = [`${tag}-a`, `${tag}-b`]
    this.startMs = clock.now
  }

  get now (): number { return this.clock.now }

  private fail (message: string): never {
    throw new Error(`${message}\n  at t+${this.now - this.startMs} ms (clock ${this.now}), after:\n    ${this.log.join('\n    ')}`)
  }

  sessionRevoked (s: Session): boolean {
    return s.revoked || this.subjectRevoked.has(s.sid)
  }

  /** The newest refresh token a session was answered (the one the index knows: its expiry, its rotation time). */
  newest (s: Session): Tok {
    return s.tokens.reduce((newest, tok) => tok.iat > newest.iat || (tok.iat === newest.iat && tok.exp > newest.exp) ? tok : newest)
  }

  /** Alive: neither revoked nor past its newest refresh token's life (a token verifies through exp * 1000). */
  alive (s: Session): boolean {
    return !this.sessionRevoked(s) && this.now <= this.newest(s).exp * 1000
  }

  /** What the store must say of a refresh of `tok` now; records what the store records. */
  predictRefresh (s: Session, tok: Tok): Expected {
    if (this.now > tok.exp * 1000) return 'token_expired'
    const rotation = s.rotations.get(tok.jti)
    if (rotation !== undefined) {
      const childRotated = rotation.child !== null && s.rotations.has(rotation.child.jti)
      const inWindow = this.settings.graceMs > 0 && this.now - rotation.atMs <= this.settings.graceMs && !childRotated
      if (!inWindow) {
        s.revoked = true
        return 'token_reused'
      }
    }
    if (this.sessionRevoked(s)) return 'token_revoked'
    if (rotation === undefined) s.rotations.set(tok.jti, { atMs: this.now, child: null })
    return '200'
  }

  /** Whether a refresh of `tok` now would record a new rotation. */
  wouldRotate (s: Session, tok: Tok): boolean {
    return this.now <= tok.exp * 1000 && !s.rotations.has(tok.jti) && !this.sessionRevoked(s)
  }

  isLive (s: Session, tok: Tok): boolean {
    return this.now <= tok.exp * 1000 && !this.sessionRevoked(s) && !s.rotations.has(tok.jti)
  }

  pick<T> (list: T[], i: number): T | undefined {
    return list.length === 0 ? undefined : list[i % list.length]
  }

  // -------------------------------------------------------------------------------------------
  // Calls to the app

  private async post (url: string, payload: unknown, apiKey = false): Promise<Response> {
    return this.app.inject({ method: 'POST', url, payload: payload as Record<string, unknown>, ...(apiKey ? { headers: { authorization: `Bearer ${API_KEY}` } } : {}) })
  }

  /** Invariant 3 for a refresh: 200, or 401 with a token code in the contract's error body. */
  private outcomeOf (response: Response): Expected {
    if (response.statusCode === 200) return '200'
    const body = response.json<Record<string, unknown>>()
    if (response.statusCode !== 401 || typeof body['code'] !== 'string' || !REFUSALS.has(body['code'])) {
      this.fail(`refresh answered ${response.statusCode} ${response.body}`)
    }
    if (body['statusCode'] !== 401 || body['error'] !== 'Unauthorized' || typeof body['message'] !== 'string') {
      this.fail(`a refusal not shaped as the contract says: ${response.body}`)
    }
    return body['code'] as Expected
  }

  private expect200 (response: Response, what: string): void {
    if (response.statusCode !== 200) this.fail(`${what} answered ${response.statusCode} ${response.body}`)
  }

  async issue (subIndex: number): Promise<void> {
    const sub = this.subs[subIndex % 2] ?? ''
    const live = this.sessions.filter((other) => other.sub === sub && this.alive(other))
    const evicted = live.slice(0, Math.max(0, live.length + 1 - MAX_SESSIONS))
    if (this.settings.store === 'redis' && evicted.some((oldest) => this.newest(oldest).exp * 1000 - this.now < REDIS_SLACK_MS)) {
      // Its revocation would last only what is left of its life, in Redis's real time: the frozen clock outlives it.
      this.log.push('  (skipped: ending a session this close to expiry outlives the frozen clock in Redis)')
      return
    }
    // Listing a session has a deadline on Redis's clock too: measure it again, as for a refresh.
    if (this.app.denylist instanceof RedisDenylist) await this.app.denylist.syncClock()
    const response = await this.post('/v1/tokens', { sub }, true)
    this.expect200(response, 'issue')
    const pair = response.json<Pair>()
    const tok = tokOf(pair.refresh_token)
    const { payload } = decodeJwt(pair.refresh_token)
    const nowSec = Math.floor(this.now / 1000)
    if (payload['auth_time'] !== nowSec || tok.iat !== nowSec || tok.exp !== nowSec + REFRESH_TTL_S) {
      this.fail(`issued at ${nowSec}, the refresh token says auth_time ${String(payload['auth_time'])}, iat ${tok.iat}, exp ${tok.exp}`)
    }
    // Past MAX_SESSIONS, the subject's oldest live sessions are revoked to make room.
    for (const oldest of evicted) {
      oldest.revoked = true
      this.ended.add(oldest.sid)
      this.log[this.log.length - 1] += ` (ends ${oldest.sid}: over ${MAX_SESSIONS})`
    }
    this.sessions.push({
      sub, sid: String(payload['sid']), authTime: nowSec, tokens: [tok], rotations: new Map(), revoked: false, user: tok, thief: null, presented: null, access: pair.access_token
    })
  }

  /** `n` refreshes of one token at the same instant (n = 1: a plain refresh). */
  async refresh (s: Session, tok: Tok, holder: 'user' | 'thief', n: number): Promise<void> {
    if (this.settings.store === 'redis' && this.wouldRotate(s, tok) && tok.exp * 1000 - this.now < REDIS_SLACK_MS) {
      this.log.push('  (skipped: a rotation this close to expiry outlives the frozen clock in Redis)')
      return
    }
    const known = s.rotations.get(tok.jti)
    const expected: Expected[] = []
    // The rotation script's deadline is on Redis's clock, measured against ours: measure it again.
    if (this.app.denylist instanceof RedisDenylist) await this.app.denylist.syncClock()
    for (let i = 0; i < n; i++) expected.push(this.predictRefresh(s, tok))
    const responses = await Promise.all(Array.from({ length: n }, async () => this.post('/v1/tokens/refresh', { refresh_token: tok.token })))
    const outcomes = responses.map((response) => this.outcomeOf(response))
    const pairs = responses.filter((response) => response.statusCode === 200).map((response) => response.json<Pair>())
    this.log[this.log.length - 1] += ` -> ${outcomes.join(',')}`

    // Invariant 2: a session an action ended never refreshes again.
    if (pairs.length > 0 && this.ended.has(s.sid)) this.fail(`a refresh of the ended session ${s.sid} succeeded`)
    // One presented token, one answer: every 200 is the same refresh token.
    for (const pair of pairs) {
      const first = this.answered.get(tok.jti)
      if (first !== undefined && first !== pair.refresh_token) this.fail(`jti ${tok.jti} got two different successors`)
      this.answered.set(tok.jti, pair.refresh_token)
    }
    if (outcomes.includes('token_reused')) this.ended.add(s.sid)

    const sorted = (list: string[]): string => [...list].sort().join(',')
    if (sorted(outcomes) !== sorted(expected)) this.fail(`refresh of ${tok.jti}: the model expects ${expected.join(',')}, the app answered ${outcomes.join(',')}`)

    const pair = pairs[0]
    if (pair === undefined) return
    const rotation = s.rotations.get(tok.jti)
    if (rotation === undefined) return this.fail('a 200 the model did not record')
    if (rotation.child === null) {
      // A new rotation: the successor is new, of the same session, issued now, with a fresh TTL.
      const child = tokOf(pair.refresh_token)
      const { payload } = decodeJwt(pair.refresh_token)
      const nowSec = Math.floor(this.now / 1000)
      if (payload['sid'] !== s.sid || payload['sub'] !== s.sub || payload['auth_time'] !== s.authTime) this.fail('the successor left its session')
      if (child.iat !== nowSec || child.exp !== nowSec + REFRESH_TTL_S) this.fail(`the successor has iat ${child.iat}, exp ${child.exp} at ${nowSec}`)
      if (this.sessions.some((other) => other.tokens.some((seen) => seen.jti === child.jti))) this.fail(`the successor reuses the jti ${child.jti}`)
      rotation.child = child
      s.tokens.push(child)
    } else if (known !== undefined && pair.refresh_token !== rotation.child.token) {
      this.fail('a retry within the window got another pair than the first rotation')
    }
    s.access = pair.access_token
    if (holder === 'user') s.user = rotation.child ?? s.user
    else s.thief = rotation.child
  }

  async revoke (s: Session, tok: Tok): Promise<void> {
    const response = await this.post('/v1/tokens/revoke', { token: tok.token })
    this.expect200(response, 'revoke')
    if (response.body !== '{}') this.fail(`revoke answered ${response.body}`)
    if (this.now <= tok.exp * 1000) {
      s.revoked = true
      this.ended.add(s.sid)
    }
  }

  async revokeAccess (s: Session): Promise<void> {
    const response = await this.post('/v1/tokens/revoke', { token: s.access })
    this.expect200(response, 'revoking an access token')
  }

  async revokeSubject (subIndex: number): Promise<void> {
    const sub = this.subs[subIndex % 2] ?? ''
    const response = await this.post(`/v1/subjects/${encodeURIComponent(sub)}/revoke`, undefined, true)
    this.expect200(response, 'subject revoke')
    for (const s of this.sessions) {
      if (s.sub !== sub) continue
      this.subjectRevoked.add(s.sid)
      this.ended.add(s.sid)
    }
  }

  /**
   * Invariants 1 and 2, then the model's view of every token, by introspection: read-only, it
   * rotates nothing. Live = introspects active = a refresh of it would mint a token not yet issued.
   */
  async probe (): Promise<void> {
    for (const sub of this.subs) {
      const response = await this.app.inject({ method: 'GET', url: `/v1/subjects/${sub}/sessions`, headers: { authorization: `Bearer ${API_KEY}` } })
      this.expect200(response, 'listing sessions')
      const listed = response.json<{ sessions: Array<{ sid: string, last_refreshed_at: number, expires_at: number }> }>().sessions
      const alive = this.sessions.filter((s) => s.sub === sub && this.alive(s)).reverse()
      const seen = listed.map((entry) => entry.sid).join(', ')
      if (seen !== alive.map((s) => s.sid).join(', ')) this.fail(`${sub} lists [${seen}], the model has alive, newest first, [${alive.map((s) => s.sid).join(', ')}]`)
      for (const [i, entry] of listed.entries()) {
        const newest = this.newest(alive[i]!)
        if (entry.expires_at !== newest.exp || entry.last_refreshed_at !== newest.iat) {
          this.fail(`${entry.sid} is listed with expires_at ${entry.expires_at}, last_refreshed_at ${entry.last_refreshed_at}; its newest token has exp ${newest.exp}, iat ${newest.iat}`)
        }
      }
    }
    for (const s of this.sessions) {
      const active = new Map<Tok, boolean>()
      for (const tok of s.tokens) {
        const response = await this.post('/v1/tokens/introspect', { token: tok.token }, true)
        this.expect200(response, 'introspect')
        active.set(tok, response.json<{ active: boolean }>().active)
      }
      const live = new Set(s.tokens.filter((tok) => active.get(tok) === true).map((tok) => tok.jti))
      if (live.size > 1) this.fail(`session ${s.sid} has ${live.size} live refresh tokens: ${[...live].join(', ')}`)
      if (live.size > 0 && this.ended.has(s.sid)) this.fail(`the ended session ${s.sid} still has a live refresh token: ${[...live].join(', ')}`)
      for (const [tok, isActive] of active) {
        if (isActive !== this.isLive(s, tok)) {
          this.fail(`session ${s.sid}: token ${tok.jti} (exp ${tok.exp}) introspects ${isActive ? 'active' : 'inactive'}, the model says ${isActive ? 'inactive' : 'active'}`)
        }
      }
    }
  }

  async run (command: Command): Promise<void> {
    this.log.push(JSON.stringify(command))
    const session = 's' in command ? this.pick(this.sessions, command.s) : undefined
    switch (command.kind) {
      case 'issue':
        await this.issue(command.sub)
        break
      case 'refresh':
      case 'concurrent': {
        if (session === undefined) break
        const tok = command.who === 'user' ? session.user : session.thief
        if (tok === null) break
        if (command.who === 'user') session.presented = tok
        await this.refresh(session, tok, command.who, command.kind === 'refresh' ? 1 : command.n)
        break
      }
      case 'steal':
        if (session !== undefined) session.thief = session.user
        break
      case 'retry':
        if (session?.presented != null) await this.refresh(session, session.presented, 'user', 1)
        break
      case 'replay': {
        const tok = session === undefined ? undefined : this.pick(session.tokens, command.t)
        if (session !== undefined && tok !== undefined) await this.refresh(session, tok, 'thief', 1)
        break
      }
      case 'revoke': {
        const tok = session === undefined ? undefined : this.pick(session.tokens, command.t)
        if (session !== undefined && tok !== undefined) await this.revoke(session, tok)
        break
      }
      case 'revokeAccess':
        if (session !== undefined) await this.revokeAccess(session)
        break
      case 'revokeSubject':
        await this.revokeSubject(command.sub)
        break
      case 'advance':
        this.clock.now += command.ms
        break
      case 'toExpiry': {
        const tok = session === undefined ? undefined : this.pick(session.tokens, command.t)
        if (tok !== undefined) this.clock.now = Math.max(this.now, tok.exp * 1000 + command.delta)
        break
      }
      case 'toGraceEnd': {
        const last = session === undefined ? undefined : Math.max(...[...session.rotations.values()].map((rotation) => rotation.atMs))
        if (last !== undefined && Number.isFinite(last)) this.clock.now = Math.max(this.now, last + this.settings.graceMs + command.delta)
        break
      }
    }
    await this.probe()
  }
}

// ---------------------------------------------------------------------------------------------
// The tests

const GRACE = [{ env: '10s', ms: 10_000, name: 'a 10 s grace window' }, { env: '0', ms: 0, name: 'no grace window' }] as const
const STORES = [{ store: 'memory', name: 'the in-process store' }, { store: 'redis', name: 'Redis' }] as const

for (const { store, name: storeName } of STORES) {
  for (const grace of GRACE) {
    test(`with ${storeName} and ${grace.name}, any interleaving of refresh, reuse, revoke and expiry leaves at most one live refresh token per session, and a revoked session never refreshes again`, async (t) => {
      const app = await build(t, {
        ...(store === 'memory' ? { REDIS_URL: '' } : { REDIS_KEY_PREFIX: `rotor-test:model-${randomBytes(6).toString('hex')}:` }),
        ACCESS_TOKEN_TTL: `${ACCESS_TTL_S}s`,
        REFRESH_TOKEN_TTL: `${REFRESH_TTL_S}s`,
        REFRESH_REUSE_GRACE: grace.env,
        REUSE_DETECTION: 'enforce',
        LEEWAY: '0s',
        RATE_LIMIT_MAX: '1000000000',
        MAX_SESSIONS_PER_SUBJECT: String(MAX_SESSIONS)
      })
      await app.ready()
      const clock = new Clock()
      const settings: Settings = { store, graceMs: grace.ms }
      let lastStart = 0
      let run = 0
      const tag = randomBytes(4).toString('hex')
      const started = clock.realNow()

      const property = fc.asyncProperty(runArb, async ({ phaseMs, commands }) => {
        // Always forward, from a second after the real clock, at the chosen point of a second.
        clock.now = (Math.floor(Math.max(clock.realNow(), lastStart) / 1000) + 2) * 1000 + phaseMs
        lastStart = clock.now
        run++
        clock.install()
        try {
          const model = new ModelRun(app, clock, settings, `model-${tag}-${run}`)
          model.log.push('{"kind":"issue","sub":0} (implicit)')
          await model.issue(0)
          await model.probe()
          for (const command of commands) await model.run(command)
        } finally {
          clock.uninstall()
        }
      })

      try {
        await fc.assert(property, { seed: SEED, numRuns: NUM_RUNS, interruptAfterTimeLimit: 60_000 })
        t.pass(`${NUM_RUNS} runs (seed ${SEED}) in ${clock.realNow() - started} ms`)
      } catch (error) {
        // fast-check's report (seed, path, shrunk counterexample), then what the app did wrong.
        const cause = (error as Error).cause
        t.fail(`the app breaks the model (seed ${SEED}; rerun with ROTOR_MODEL_SEED=${SEED}):\n${(error as Error).message}\n${cause instanceof Error ? cause.message : ''}`)
      }
    })
  }
}

// ---------------------------------------------------------------------------------------------
// The last millisecond, spelled out: the counterexamples the model finds with the in-process store.
// A token verifies up to and including the millisecond exp * 1000 (fast-jwt: now <= exp * 1000 +
// leeway), so every record that refuses it must still be there at that millisecond.

async function frozen (clock: Clock, startMs: number, body: () => Promise<void>): Promise<void> {
  clock.now = startMs
  clock.install()
  try {
    await body()
  } finally {
    clock.uninstall()
  }
}

const BOUNDARY_ENV = { REDIS_URL: '', ACCESS_TOKEN_TTL: `${ACCESS_TTL_S}s`, REFRESH_TOKEN_TTL: `${REFRESH_TTL_S}s`, REFRESH_REUSE_GRACE: '10s' }

async function post (app: FastifyInstance, url: string, payload?: Record<string, unknown>, apiKey = false): Promise<Response> {
  return app.inject({ method: 'POST', url, ...(payload === undefined ? {} : { payload }), ...(apiKey ? { headers: { authorization: `Bearer ${API_KEY}` } } : {}) })
}

test('the in-process store: a rotated refresh token replayed in the last millisecond of its life is reuse, not a second rotation', async (t) => {
  const app = await build(t, BOUNDARY_ENV)
  const clock = new Clock()
  await frozen(clock, (Math.floor(clock.realNow() / 1000) + 2) * 1000 + 250, async () => {
    const first = (await post(app, '/v1/tokens', { sub: 'boundary-reuse' }, true)).json<Pair>()
    const second = (await post(app, '/v1/tokens/refresh', { refresh_token: first.refresh_token })).json<Pair>()
    clock.now = tokOf(first.refresh_token).exp * 1000
    t.same((await post(app, '/v1/tokens/introspect', { token: first.refresh_token }, true)).json(), { active: false }, 'the rotated token is not live')
    const replay = await post(app, '/v1/tokens/refresh', { refresh_token: first.refresh_token })
    t.equal(replay.statusCode, 401, 'the replay is refused')
    t.equal(replay.json<Record<string, unknown>>()['code'], 'token_reused')
    t.equal((await post(app, '/v1/tokens/refresh', { refresh_token: second.refresh_token })).json<Record<string, unknown>>()['code'], 'token_revoked', 'and the session ends')
  })
})

test('the in-process store: a session revoked in the second its token was minted stays revoked in that token\'s last millisecond', async (t) => {
  const app = await build(t, BOUNDARY_ENV)
  const clock = new Clock()
  await frozen(clock, (Math.floor(clock.realNow() / 1000) + 2) * 1000, async () => {
    const pair = (await post(app, '/v1/tokens', { sub: 'boundary-logout' }, true)).json<Pair>()
    t.equal((await post(app, '/v1/tokens/revoke', { token: pair.refresh_token })).statusCode, 200)
    clock.now = tokOf(pair.refresh_token).exp * 1000
    const refresh = await post(app, '/v1/tokens/refresh', { refresh_token: pair.refresh_token })
    t.equal(refresh.statusCode, 401, 'a logged-out session does not refresh')
    t.equal(refresh.json<Record<string, unknown>>()['code'], 'token_revoked')
  })
})

test('the in-process store: a subject revoked in the second its token was minted stays revoked in that token\'s last millisecond', async (t) => {
  const app = await build(t, BOUNDARY_ENV)
  const clock = new Clock()
  await frozen(clock, (Math.floor(clock.realNow() / 1000) + 2) * 1000, async () => {
    const pair = (await post(app, '/v1/tokens', { sub: 'boundary-everywhere' }, true)).json<Pair>()
    t.equal((await post(app, '/v1/subjects/boundary-everywhere/revoke', undefined, true)).statusCode, 200)
    clock.now = tokOf(pair.refresh_token).exp * 1000
    const refresh = await post(app, '/v1/tokens/refresh', { refresh_token: pair.refresh_token })
    t.equal(refresh.statusCode, 401, 'a subject logged out everywhere does not refresh')
    t.equal(refresh.json<Record<string, unknown>>()['code'], 'token_revoked')
  })
})
