import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { Agent, createServer, request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { join } from 'node:path'
import t from 'tap'
import { newPrivateJwk } from '../../scripts/keys.js'
import { API_KEY, OTHER_API_KEY, REDIS_URL, decodeJwt, type Pair } from '../support/app.js'
import { deletePrefix } from '../support/redis.js'
import { freePort } from '../support/net.js'
import { SERVER } from '../support/paths.js'

/*
 * Three real Rotor processes behind a round-robin proxy, sharing one Redis, must behave as one
 * service: concurrent refreshes of one token make one session, rate limits are one budget, and
 * "log out everywhere" holds on every instance.
 */

const INSTANCES = 3
const MAX = 40
/** A key for the rate-limit test alone, so that no other test spends its budget. */
const RATE_KEY = 'rate-api-key-0123456789abcdef'
/** The proxy turns this test-only request header into X-Forwarded-For, as a real proxy would from the socket. */
const CLIENT_HEADER = 'x-test-client'
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade'])

/** Rotor settings a developer's shell may hold: the children must not inherit them. */
const SETTINGS = new Set([
  'PORT', 'HOST', 'LOG_LEVEL', 'REDIS_URL', 'REDIS_CLUSTER_NODES', 'REDIS_SENTINELS', 'REDIS_SENTINEL_NAME', 'REDIS_KEY_PREFIX',
  'DENYLIST_ENABLED', 'ROTATE_REFRESH_TOKENS', 'ACCESS_TOKEN_TTL', 'REFRESH_TOKEN_TTL', 'SESSION_MAX_TTL', 'REFRESH_REUSE_GRACE',
  'REUSE_DETECTION', 'LEEWAY', 'JWT_ALGORITHM', 'JWT_KEYS_FILE', 'JWT_ACTIVE_KID', 'JWT_SECRET', 'JWT_ISSUER', 'JWT_AUDIENCE',
  'API_KEYS', 'CORS_ORIGINS', 'RATE_LIMIT_MAX', 'RATE_LIMIT_WINDOW', 'TRUST_PROXY', 'RATE_LIMIT_ALLOW', 'COMPAT_SIMPLEJWT',
  'LEGACY_SIMPLEJWT_SIGNING_KEY', 'NODE_ENV'
])

/**
 * Preloaded into each child: it shuts down (SIGTERM, so graceful) when its stdin, a pipe from this
 * process, closes. Teardown and the exit hook below cover a failing test; this covers this process
 * being killed outright (a tap timeout), which would otherwise leave three servers listening.
 */
const ORPHAN_GUARD = 'data:text/javascript,process.stdin.on("end",()=>process.kill(process.pid,"SIGTERM")).resume().unref()'

const children = new Set<ChildProcess>()
process.once('exit', () => { for (const child of children) child.kill('SIGKILL') })

/** Three instances behind one proxy; `base` is the proxy's URL. */
interface Fleet {
  base: string
}

interface Proxy {
  base: string
  close: () => Promise<void>
}

const STARTUP_DEADLINE_MS = 90_000

/**
 * Starts one Rotor process on a free port, added to `started` at once (teardown stops it even if it
 * never gets ready); resolves with its port once /health/ready answers 200 (Redis reached).
 */
async function startInstance (dir: string, env: Record<string, string>, started: ChildProcess[]): Promise<number> {
  const port = await freePort()
  const inherited: Record<string, string> = {}
  for (const [name, value] of Object.entries(process.env)) if (value !== undefined && !SETTINGS.has(name)) inherited[name] = value
  const child = spawn(process.execPath, [...process.execArgv, `--import=${ORPHAN_GUARD}`, SERVER], {
    cwd: dir, // no stray .env: only the settings given here
    env: { ...inherited, ...env, PORT: String(port), HOST: '127.0.0.1' },
    stdio: ['pipe', 'pipe', 'pipe']
  })
  children.add(child)
  started.push(child)
  let output = ''
  const keep = (chunk: Buffer): void => { output = (output + chunk.toString()).slice(-4000) }
  child.stdout?.on('data', keep)
  child.stderr?.on('data', keep)
  let exited = false
  child.once('exit', () => { exited = true; children.delete(child) })
  // Each instance compiles Rotor's TypeScript as it starts (~3 s of CPU): five at once on a busy
  // 2-core machine took over 30 s once. This deadline is for "it will never start", under tap's own.
  const deadline = Date.now() + STARTUP_DEADLINE_MS
  while (true) {
    if (exited) throw new Error(`instance on port ${port} exited before it was ready:\n${output}`)
    if (Date.now() > deadline) throw new Error(`instance on port ${port} not ready after ${STARTUP_DEADLINE_MS / 1000} s:\n${output}`)
    try {
      if ((await fetch(`http://127.0.0.1:${port}/health/ready`, { signal: AbortSignal.timeout(2000) })).status === 200) return port
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** SIGTERM (graceful, so coverage is written), SIGKILL if it has not exited within 5 s. */
async function stopInstance (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
  await exited
  clearTimeout(timer)
}

/**
 * A round-robin reverse proxy: request n goes to instance n mod 3, with X-Forwarded-For set to the
 * client address the test names, and the answer says which instance served it (`x-instance`).
 */
async function startProxy (ports: number[]): Promise<Proxy> {
  const agent = new Agent({ keepAlive: true })
  let next = 0
  const server = createServer((request, response) => {
    const index = next++ % ports.length
    const client = request.headers[CLIENT_HEADER]
    const headers = Object.fromEntries(Object.entries(request.headers).filter(([name]) => !HOP_BY_HOP.has(name) && name !== CLIENT_HEADER))
    headers['x-forwarded-for'] = typeof client === 'string' ? client : '192.0.2.1'
    const upstream = httpRequest({ host: '127.0.0.1', port: ports[index], method: request.method, path: request.url, headers, agent }, (answer) => {
      const back: IncomingHttpHeaders = Object.fromEntries(Object.entries(answer.headers).filter(([name]) => !HOP_BY_HOP.has(name)))
      response.writeHead(answer.statusCode ?? 502, { ...back, 'x-instance': String(index) })
      answer.pipe(response)
    })
    upstream.on('error', (error) => {
      if (!response.headersSent) response.writeHead(502, { 'x-instance': String(index) })
      response.end(error.message)
    })
    request.pipe(upstream)
  })
  const port = await freePort()
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve))
  return {
    base: `http://127.0.0.1:${port}`,
    close: async () => {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
      agent.destroy()
    }
  }
}

/** Three instances with the same keys, API keys and Redis prefix, behind one proxy. */
async function startFleet (dir: string, env: Record<string, string>, instances = INSTANCES): Promise<Fleet> {
  const prefix = `rotor-test:multi-${randomBytes(6).toString('hex')}:`
  const started: ChildProcess[] = []
  let proxy: Proxy | null = null
  t.teardown(async () => {
    await proxy?.close()
    await Promise.all(started.map(stopInstance))
    await deletePrefix(REDIS_URL, prefix) // once nothing writes under it any more
  })
  const settings = {
    LOG_LEVEL: 'warn',
    REDIS_URL,
    REDIS_KEY_PREFIX: prefix,
    JWT_KEYS_FILE: join(dir, 'keys.json'),
    API_KEYS: [API_KEY, OTHER_API_KEY, RATE_KEY].join(','),
    TRUST_PROXY: '127.0.0.1',
    RATE_LIMIT_MAX: String(MAX),
    RATE_LIMIT_WINDOW: '60s',
    ...env
  }
  const ports = await Promise.all(Array.from({ length: instances }, async () => startInstance(dir, settings, started)))
  proxy = await startProxy(ports)
  return { base: proxy.base }
}

interface Answer {
  status: number
  instance: number
  body: Record<string, unknown>
  headers: Headers
}

/** One POST through the proxy, from `client`, with the API key when given. */
async function post (fleet: Fleet, path: string, body: unknown, from: { client: string, apiKey?: string }): Promise<Answer> {
  const response = await fetch(`${fleet.base}${path}`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      [CLIENT_HEADER]: from.client,
      ...(from.apiKey === undefined ? {} : { authorization: `Bearer ${from.apiKey}` })
    },
    body: JSON.stringify(body)
  })
  return {
    status: response.status,
    instance: Number(response.headers.get('x-instance')),
    body: await response.json() as Record<string, unknown>,
    headers: response.headers
  }
}

async function issueThrough (fleet: Fleet, sub: string, from: { client: string, apiKey: string }): Promise<{ pair: Pair, instance: number }> {
  const answer = await post(fleet, '/v1/tokens', { sub }, from)
  if (answer.status !== 200) throw new Error(`issue failed: ${answer.status} ${JSON.stringify(answer.body)}`)
  return { pair: answer.body as unknown as Pair, instance: answer.instance }
}

/** Introspects `token` once on each instance (three consecutive requests through the round robin). */
async function introspectEverywhere (fleet: Fleet, token: string, from: { client: string, apiKey: string }): Promise<Answer[]> {
  const answers: Answer[] = []
  for (let i = 0; i < INSTANCES; i++) answers.push(await post(fleet, '/v1/tokens/introspect', { token }, from))
  return answers
}

function instancesOf (answers: Answer[]): number[] {
  return [...new Set(answers.map((answer) => answer.instance))].sort((a, b) => a - b)
}

function spread (answers: Answer[]): string {
  const counts = Array.from({ length: INSTANCES }, (_, index) => answers.filter((answer) => answer.instance === index).length)
  return counts.join('/')
}

const ALL = Array.from({ length: INSTANCES }, (_, index) => index)
const unique = (name: string): string => `${name}-${randomBytes(4).toString('hex')}`

let windowed: Fleet
let strict: Fleet

t.before(async () => {
  const dir = t.testdir()
  writeFileSync(join(dir, 'keys.json'), JSON.stringify({ keys: [newPrivateJwk('EdDSA', new Date())] }), { mode: 0o600 })
  // Grace on and grace off need two fleets; they start at once. Starting is CPU-bound (tap's
  // TypeScript loader, about 1.5 s of CPU per process), so this is most of the file's runtime.
  ;[windowed, strict] = await Promise.all([
    startFleet(dir, { REFRESH_REUSE_GRACE: '10s' }),
    // Two are enough to show the race is decided across instances; a sixth process costs seconds.
    startFleet(dir, { REFRESH_REUSE_GRACE: '0' }, 2)
  ])
})

t.test('30 concurrent refreshes of one token over 3 instances, grace window on: one session, one successor pair', async (t) => {
  const from = { client: '198.51.100.10', apiKey: API_KEY }
  const { pair } = await issueThrough(windowed, unique('tabs'), from)
  const answers = await Promise.all(Array.from({ length: 30 }, async () =>
    post(windowed, '/v1/tokens/refresh', { refresh_token: pair.refresh_token }, from)))
  t.same(instancesOf(answers), ALL, `every instance served some (spread ${spread(answers)})`)
  t.same(answers.map((answer) => answer.status), answers.map(() => 200), 'every refresh within the window answers 200')
  t.equal(new Set(answers.map((answer) => answer.body['refresh_token'])).size, 1, 'one successor refresh token, whichever instance answered')
  t.equal(new Set(answers.map((answer) => answer.body['access_token'])).size, 1, 'and one access token (EdDSA is deterministic)')
  const successor = answers[0]?.body as unknown as Pair
  t.equal(decodeJwt(successor.refresh_token).payload['sid'], decodeJwt(pair.refresh_token).payload['sid'], 'the same session')
  const next = await post(windowed, '/v1/tokens/refresh', { refresh_token: successor.refresh_token }, from)
  t.equal(next.status, 200, 'the session lives on through the successor')
  t.not(next.body['refresh_token'], successor.refresh_token, 'which rotates again')
})

t.test('30 concurrent refreshes of one token over 2 instances, REFRESH_REUSE_GRACE=0: one 200, the rest token_reused', async (t) => {
  const from = { client: '198.51.100.11', apiKey: API_KEY }
  const { pair } = await issueThrough(strict, unique('race'), from)
  const answers = await Promise.all(Array.from({ length: 30 }, async () =>
    post(strict, '/v1/tokens/refresh', { refresh_token: pair.refresh_token }, from)))
  t.same(instancesOf(answers), [0, 1], `both instances served some (spread ${spread(answers)})`)
  const winners = answers.filter((answer) => answer.status === 200)
  const losers = answers.filter((answer) => answer.status !== 200)
  t.equal(winners.length, 1, 'exactly one rotation across all instances')
  t.same(losers.map((answer) => [answer.status, answer.body['code']]), losers.map(() => [401, 'token_reused']), 'every other one is reuse')
  // The contract: reuse revokes the session, so the winner's pair stops working on every instance
  // too, whichever instance saw the reuse.
  const winner = winners[0]?.body as unknown as Pair
  const next = await post(strict, '/v1/tokens/refresh', { refresh_token: winner.refresh_token }, from)
  t.same([next.status, next.body['code']], [401, 'token_revoked'], 'the reuse revoked the session the winner holds')
  const introspected = [await post(strict, '/v1/tokens/introspect', { token: winner.access_token }, from), await post(strict, '/v1/tokens/introspect', { token: winner.access_token }, from)]
  t.same(instancesOf(introspected), [0, 1])
  t.same(introspected.map((answer) => answer.body), introspected.map(() => ({ active: false })), 'its access token is inactive on every instance')
})

t.test('rate limits are one budget across the instances, per client address and per API key', async (t) => {
  const inOrder = async (count: number, send: () => Promise<Answer>): Promise<Answer[]> => {
    const answers: Answer[] = []
    for (let i = 0; i < count; i++) answers.push(await send()) // in order: the budget's count is then exact
    return answers
  }
  const count = MAX + MAX / 2 // per-instance budgets would let all of them through (MAX each)

  const client = { client: '198.51.100.20' }
  const publicAnswers = await inOrder(count, async () => post(windowed, '/v1/tokens/refresh', { refresh_token: 'not-a-token' }, client))
  t.same(publicAnswers.map((answer) => [answer.status, answer.body['code']]),
    [...Array(MAX).fill([401, 'token_invalid']), ...Array(count - MAX).fill([429, 'rate_limited'])],
    `exactly ${MAX} served from one client address (spread ${spread(publicAnswers)})`)
  t.same(publicAnswers.slice(0, MAX).map((answer) => answer.headers.get('x-ratelimit-remaining')),
    Array.from({ length: MAX }, (_, i) => String(MAX - 1 - i)), 'one count, falling by one whichever instance answers')
  t.same(instancesOf(publicAnswers.slice(MAX)), ALL, 'every instance refuses once the shared budget is spent')
  t.ok(publicAnswers.slice(MAX).every((answer) => Number(answer.headers.get('retry-after')) >= 1), 'with Retry-After')
  const other = await inOrder(INSTANCES, async () => post(windowed, '/v1/tokens/refresh', { refresh_token: 'not-a-token' }, { client: '198.51.100.21' }))
  t.same(other.map((answer) => answer.status), other.map(() => 401), 'another client address still gets through, on every instance')
  t.same(instancesOf(other), ALL)

  // Many client addresses, one API key: the backend budget is shared too.
  let n = 0
  const backendAnswers = await inOrder(count, async () =>
    post(windowed, '/v1/tokens/introspect', { token: 'not-a-token' }, { client: `203.0.113.${n++ % 200}`, apiKey: RATE_KEY }))
  t.same(backendAnswers.map((answer) => [answer.status, answer.body['code']]),
    [...Array(MAX).fill([200, undefined]), ...Array(count - MAX).fill([429, 'rate_limited'])],
    `exactly ${MAX} served for one API key (spread ${spread(backendAnswers)})`)
  t.same(instancesOf(backendAnswers.slice(MAX)), ALL)
})

t.test('log out everywhere, called on one instance, ends the subject\'s sessions issued by every instance', async (t) => {
  const from = { client: '198.51.100.30', apiKey: OTHER_API_KEY }
  const alice = unique('alice')
  const sessions = []
  for (let i = 0; i < INSTANCES; i++) sessions.push(await issueThrough(windowed, alice, from))
  t.same([...new Set(sessions.map((session) => session.instance))].sort((a, b) => a - b), ALL, 'one session issued by each instance')
  const bob = await issueThrough(windowed, unique('bob'), from)
  for (const { pair } of [...sessions, bob]) {
    const before = await introspectEverywhere(windowed, pair.access_token, from)
    t.ok(before.every((answer) => answer.body['active'] === true), 'active on every instance before')
  }

  const revoked = await post(windowed, `/v1/subjects/${encodeURIComponent(alice)}/revoke`, {}, from)
  t.same([revoked.status, revoked.body], [200, {}], `revoked through instance ${revoked.instance}`)

  const refreshes = []
  for (const { pair } of sessions) refreshes.push(await post(windowed, '/v1/tokens/refresh', { refresh_token: pair.refresh_token }, from))
  t.same(refreshes.map((answer) => [answer.status, answer.body['code']]), refreshes.map(() => [401, 'token_revoked']),
    'no session refreshes any more')
  t.same(instancesOf(refreshes), ALL, 'on any instance')
  for (const { pair, instance } of sessions) {
    const after = await introspectEverywhere(windowed, pair.access_token, from)
    t.same(instancesOf(after), ALL)
    t.same(after.map((answer) => answer.body), after.map(() => ({ active: false })), `the access token issued by instance ${instance} is inactive on every instance`)
  }

  const untouched = await introspectEverywhere(windowed, bob.pair.access_token, from)
  t.ok(untouched.every((answer) => answer.body['active'] === true), 'another subject\'s access token stays active on every instance')
  const bobRefresh = await post(windowed, '/v1/tokens/refresh', { refresh_token: bob.pair.refresh_token }, from)
  t.equal(bobRefresh.status, 200, 'and its session still refreshes')
})
