// What a test sends a running Rotor: the shared rotation and revocation check, a burst of one
// refresh token, and steady refresh traffic from many users.
import type { FastifyInstance } from 'fastify'
import { API_KEY, decodeJwt, introspectToken, issue, refreshWith, type Pair } from './app.js'
import type { Assertions, Test } from './tap.js'

/**
 * What every Redis shape must do as one node does (the app runs with REFRESH_REUSE_GRACE=0):
 * each subject's refresh rotates, a replay is reuse and revokes the session; a revoked access
 * token introspects inactive; log-out-everywhere ends a session.
 */
export async function checkRotationAndRevocation (t: Test & Assertions, app: FastifyInstance, subjects: string[]): Promise<void> {
  t.same((await app.inject({ method: 'GET', url: '/health/ready' })).json(), { status: 'ok', store: 'redis' }, 'ready, on Redis')
  for (const sub of subjects) {
    const pair = await issue(app, { sub })
    const rotated = await refreshWith(app, pair.refresh_token)
    t.equal(rotated.statusCode, 200, `${sub}: refresh`)
    t.equal((await refreshWith(app, pair.refresh_token)).json().code, 'token_reused', `${sub}: reuse is detected`)
    t.equal((await refreshWith(app, rotated.json<Pair>().refresh_token)).json().code, 'token_revoked', `${sub}: and revokes the session`)
  }
  const revoked = await issue(app, { sub: 'revoked-access' })
  await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: revoked.access_token } })
  t.same(await introspectToken(app, revoked.access_token), { active: false }, 'a revoked access token is inactive')
  const everywhere = await issue(app, { sub: 'everywhere' })
  await app.inject({ method: 'POST', url: '/v1/subjects/everywhere/revoke', headers: { authorization: `Bearer ${API_KEY}` } })
  t.equal((await refreshWith(app, everywhere.refresh_token)).json().code, 'token_revoked', 'log out everywhere ends the session')
}

/**
 * The session index on a Redis shape (the app runs with MAX_SESSIONS_PER_SUBJECT=2): per subject,
 * a third session ends the oldest; the sessions are listed newest first, ended one by one by a
 * backend and by their user, and log-out-everywhere empties the list. Every record of a subject
 * is in its hash slot, so this holds on a Cluster for any subject.
 */
export async function checkSessions (t: Test & Assertions, app: FastifyInstance, subjects: string[]): Promise<void> {
  const backend = { authorization: `Bearer ${API_KEY}` }
  for (const sub of subjects) {
    const path = `/v1/subjects/${encodeURIComponent(sub)}/sessions`
    const listed = async (): Promise<string[]> => (await app.inject({ method: 'GET', url: path, headers: backend })).json<{ sessions: Array<{ sid: string }> }>().sessions.map((session) => session.sid)
    const [oldest, middle, newest] = [await issue(app, { sub, device: 'a' }), await issue(app, { sub, device: 'b' }), await issue(app, { sub, device: 'c' })]
    const sid = (pair: Pair): string => String(decodeJwt(pair.refresh_token).payload['sid'])
    t.same(await listed(), [sid(newest), sid(middle)], `${sub}: the two newest are listed`)
    t.equal((await refreshWith(app, oldest.refresh_token)).json().code, 'token_revoked', `${sub}: the oldest was ended to make room`)
    const ended = await app.inject({ method: 'DELETE', url: `${path}/${sid(middle)}`, headers: backend })
    t.equal(ended.statusCode, 200, `${sub}: a backend ends one`)
    t.equal((await refreshWith(app, middle.refresh_token)).json().code, 'token_revoked', `${sub}: it stops`)
    const mine = await app.inject({ method: 'GET', url: '/v1/sessions', headers: { authorization: `Bearer ${newest.access_token}` } })
    t.same(mine.json<{ sessions: Array<{ sid: string, current: boolean }> }>().sessions.map((session) => [session.sid, session.current]), [[sid(newest), true]], `${sub}: the user sees the one left`)
    await app.inject({ method: 'POST', url: `/v1/subjects/${encodeURIComponent(sub)}/revoke`, headers: backend })
    t.same(await listed(), [], `${sub}: log out everywhere empties the list`)
  }
}

/** The same refresh token sent `count` times at once over real sockets; the statuses, in order. */
export async function refreshAtOnce (base: string, refreshToken: string, count: number): Promise<number[]> {
  return await Promise.all(Array.from({ length: count }, async () => (await fetch(`${base}/v1/tokens/refresh`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: refreshToken })
  })).status))
}

/** Refresh traffic over a real socket: users each refresh in a loop, retrying their own token after a refusal, as a client would. */
export class RefreshTraffic {
  /** How many answers had each status. */
  readonly statuses = new Map<number, number>()
  /** The contract codes of the refusals. */
  readonly codes = new Set<string>()
  private readonly tokens: string[]
  private readonly lastServed: number[]
  /** Users that got an answer a retry cannot change (a 4xx), and stopped. */
  private readonly settled: boolean[]
  private stopped = false
  private readonly loops: Array<Promise<void>>

  constructor (base: string, refreshTokens: string[]) {
    this.tokens = [...refreshTokens]
    this.lastServed = this.tokens.map(() => 0)
    this.settled = this.tokens.map(() => false)
    this.loops = this.tokens.map(async (_, i) => {
      while (!this.stopped) {
        const response = await fetch(`${base}/v1/tokens/refresh`, {
          method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: this.tokens[i] }), signal: AbortSignal.timeout(5000)
        })
        const body = await response.json() as { refresh_token?: string, code?: string }
        this.statuses.set(response.status, (this.statuses.get(response.status) ?? 0) + 1)
        if (response.status === 200) {
          this.tokens[i] = String(body.refresh_token)
          this.lastServed[i] = Date.now()
        } else {
          this.codes.add(String(body.code))
          // A 4xx will not change on retry (a logged-out user): this user stops, and the test sees why.
          if (response.status < 500) {
            this.settled[i] = true
            break
          }
          await new Promise((resolve) => setTimeout(resolve, 20))
        }
      }
    })
  }

  /** How many users got a 200 after `time` (ms since the epoch), or stopped on a 4xx (for the test to report). */
  servedSince (time: number): number {
    return this.lastServed.filter((served, i) => served > time || this.settled[i]).length
  }

  get users (): number {
    return this.tokens.length
  }

  async stop (): Promise<void> {
    this.stopped = true
    await Promise.all(this.loops)
  }
}
