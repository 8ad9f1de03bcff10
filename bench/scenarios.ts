import type { Redis } from 'ioredis'
import { ServerProcess } from './child.js'
import { resultsDir, type RunContext } from './context.js'
import { cpuShare, cpuSnapshot, type CpuShare } from './cpu.js'
import { runLoad, unhealthy, type LoadResult, type PooledRequest } from './load.js'
import type { ScenarioName } from './options.js'
import { countKeys, deletePrefix, escapeGlob, fillDenylist, type FillResult } from './redis.js'
import { fmtInt, fmtMiB, fmtMs } from './report.js'
import { Minter, writeEd25519KeysFile } from './tokens.js'

/**
 * One scenario: a fresh server child, a preflight request, a warm-up, the measurement with bodies
 * never sent twice, every response checked, the rotations counted in Redis, the scenario's keys
 * deleted. The soak and --replication run theirs through runScenario too.
 */

type BodyKind = 'none' | 'issue' | 'refresh' | 'refresh-one-key' | 'refresh-dpop' | 'introspect' | 'introspect-hot'

export interface Scenario {
  name: string
  label: string
  server: 'hello' | 'rotor' | 'naive'
  algorithm: 'EdDSA' | 'HS256'
  method: 'GET' | 'POST'
  path: string
  apiKey: boolean
  body: BodyKind
  /** What every 2xx body must contain. */
  expect: string
  /** Each 2xx writes exactly one rotated-token record: checked in Redis afterwards. */
  rotates: boolean
  /** Settings of this scenario's server on top of rotorEnv's. */
  env?: Record<string, string>
}

const SCENARIOS: Record<ScenarioName, Omit<Scenario, 'name'>> = {
  hello: { label: 'hello world (ceiling)', server: 'hello', algorithm: 'EdDSA', method: 'GET', path: '/', apiKey: false, body: 'none', expect: '"hello"', rotates: false },
  issue: { label: 'issue (EdDSA)', server: 'rotor', algorithm: 'EdDSA', method: 'POST', path: '/v1/tokens', apiKey: true, body: 'issue', expect: '"refresh_token"', rotates: false },
  refresh: { label: 'refresh (EdDSA)', server: 'rotor', algorithm: 'EdDSA', method: 'POST', path: '/v1/tokens/refresh', apiKey: false, body: 'refresh', expect: '"refresh_token"', rotates: true },
  // A session bound to an ES256 key: one more signature to verify, one more key in the script.
  'refresh-dpop': { label: 'refresh (EdDSA, DPoP)', server: 'rotor', algorithm: 'EdDSA', method: 'POST', path: '/v1/tokens/refresh', apiKey: false, body: 'refresh-dpop', expect: '"refresh_token"', rotates: true },
  // The reference (bench/naive.ts): the same refresh bodies, a service that does far less.
  naive: { label: 'naive refresh (EdDSA)', server: 'naive', algorithm: 'EdDSA', method: 'POST', path: '/v1/tokens/refresh', apiKey: false, body: 'refresh', expect: '"refresh_token"', rotates: true },
  // The reference as the issue describes it: @fastify/jwt's one secret signs and verifies both tokens.
  'naive-one-key': { label: 'naive refresh, one key (EdDSA)', server: 'naive', algorithm: 'EdDSA', method: 'POST', path: '/v1/tokens/refresh', apiKey: false, body: 'refresh-one-key', expect: '"refresh_token"', rotates: true, env: { NAIVE_REFRESH_KEY: 'access' } },
  'naive-hs256': { label: 'naive refresh (HS256)', server: 'naive', algorithm: 'HS256', method: 'POST', path: '/v1/tokens/refresh', apiKey: false, body: 'refresh', expect: '"refresh_token"', rotates: true },
  'refresh-hs256': { label: 'refresh (HS256)', server: 'rotor', algorithm: 'HS256', method: 'POST', path: '/v1/tokens/refresh', apiKey: false, body: 'refresh', expect: '"refresh_token"', rotates: true },
  introspect: { label: 'introspect (EdDSA access)', server: 'rotor', algorithm: 'EdDSA', method: 'POST', path: '/v1/tokens/introspect', apiKey: true, body: 'introspect', expect: '"active":true', rotates: false },
  // The same 256 access tokens over and over, as backends introspect their users' tokens on every call.
  'introspect-hot': { label: 'introspect (256 tokens, repeated)', server: 'rotor', algorithm: 'EdDSA', method: 'POST', path: '/v1/tokens/introspect', apiKey: true, body: 'introspect-hot', expect: '"active":true', rotates: false },
  jwks: { label: 'JWKS', server: 'rotor', algorithm: 'EdDSA', method: 'GET', path: '/.well-known/jwks.json', apiKey: false, body: 'none', expect: '"keys"', rotates: false }
}

export function scenario (name: ScenarioName, overrides: Partial<Scenario> = {}): Scenario {
  return { name, ...SCENARIOS[name], ...overrides }
}

export function rotorEnv (run: RunContext, algorithm: 'EdDSA' | 'HS256', prefix: string, extra: Record<string, string> = {}): Record<string, string> {
  run.keysFile ??= writeEd25519KeysFile()
  return {
    // Rotor's default: its one line per token event is part of what a refresh costs (into /dev/null, see bench/server.ts).
    LOG_LEVEL: 'info',
    API_KEYS: run.apiKey,
    REDIS_URL: run.options.redisUrl,
    REDIS_KEY_PREFIX: prefix,
    DENYLIST_ENABLED: 'true',
    // Rate limiting stays on, as deployed (its Redis round trip included), but never refuses.
    RATE_LIMIT_MAX: '1000000000',
    JWT_ALGORITHM: algorithm,
    ...(algorithm === 'HS256' ? { JWT_SECRET: run.hs256Secret } : { JWT_KEYS_FILE: run.keysFile }),
    ...run.options.serverEnv,
    ...extra
  }
}

/** A Minter with the keys a server of this algorithm gets (the floor's signatures and HMACs). */
export function minterFor (run: RunContext, algorithm: 'EdDSA' | 'HS256'): Minter {
  return new Minter(rotorEnv(run, algorithm, run.prefix), run.options.sessions)
}

/**
 * Each 2xx refresh records exactly one rotated jti, a refused or retried one none: the records
 * found must lie between the 2xx answered and the tokens sent (requests still in flight when
 * autocannon stops are processed but never counted). Fewer than the 2xx would mean a 2xx that
 * rotated nothing: a grace-window retry, i.e. a token used twice.
 */
export interface RedisCheck { fill: number, answered2xx: number, sent: number, found: number, ok: boolean }

export async function checkRotations (run: RunContext, client: Redis | null, prefix: string, fill: number, answered2xx: number, sent: number): Promise<RedisCheck | null> {
  if (client === null) return null
  const found = await countKeys(client, `${escapeGlob(prefix)}{*}:j:*`) - fill
  const ok = found >= answered2xx && found <= sent
  if (!ok) run.fail(`Redis holds ${found} rotated-token records under ${prefix}, expected between ${answered2xx} (2xx answered) and ${sent} (tokens sent)`)
  else run.say(`  Redis: ${fmtInt(found)} rotated-token records${fill > 0 ? ' besides the fill' : ''} for ${fmtInt(answered2xx)} 2xx answered and ${fmtInt(sent)} tokens sent: every 2xx was a first use`)
  return { fill, answered2xx, sent, found, ok }
}

function cpuLine (cpu: CpuShare): string {
  const f = (n: number | null): string => n === null ? '?' : n.toFixed(2)
  return `CPU in cores: server ${f(cpu.server)}, bench (autocannon) ${f(cpu.bench)}, Redis ${f(cpu.redis)}, everything else ${f(cpu.others)}`
}

export interface ScenarioResult {
  name: string
  label: string
  redisKeyPrefix: string
  denylistEntries: number
  fill: FillResult | null
  server: { kind: string, algorithm: string | null, env: Record<string, string> }
  warmup: { seconds: number, rps: number, non2xx: number, errors: number } | null
  measured: LoadResult | null
  attempts: number
  tokensMinted: number
  ratioToCeiling: number | null
  /** Cores used during the measured run, by whom. */
  cpu: CpuShare | null
  redisCheck: RedisCheck | null
  cleanup: { keysDeleted: number, seconds: number } | null
  error: string | null
}

/** Where bodies come from: pre-minted (one use each) for refresh and introspect. */
class BodyPool {
  private bodies: Array<string | PooledRequest> = []
  private index = 0
  readonly next = (): string | PooledRequest | undefined => this.index < this.bodies.length ? this.bodies[this.index++] : undefined
  fill (bodies: Array<string | PooledRequest>): void {
    this.bodies = bodies
    this.index = 0
  }

  get size (): number {
    return this.bodies.length
  }
}

function issueBodies (): string[] {
  return Array.from({ length: 1024 }, (_, i) => JSON.stringify({ sub: `user-${i}`, claims: { role: 'editor' } }))
}

function mint (minter: Minter, kind: BodyKind, n: number, url: string): Array<string | PooledRequest> {
  // Only the one-use kinds are minted into the pool (refresh, introspect).
  if (kind === 'refresh-dpop') return minter.dpopRefreshRequests(n, url)
  if (kind === 'refresh-one-key') return minter.oneKeyRefreshBodies(n)
  return kind === 'refresh' ? minter.refreshBodies(n) : minter.introspectBodies(n)
}

export function describeFailures (result: LoadResult): string {
  const codes = Object.entries(result.statusCodes).filter(([code]) => !code.startsWith('2')).map(([code, n]) => `${code}×${n}`).join(', ')
  const parts = []
  if (result.non2xx > 0) parts.push(`${result.non2xx} non-2xx (${codes})`)
  if (result.errors > 0) parts.push(`${result.errors} connection errors`)
  if (result.timeouts > 0) parts.push(`${result.timeouts} timeouts`)
  if (result.mismatches > 0) parts.push(`${result.mismatches} 2xx with an unexpected body`)
  const sample = result.sampleFailures[0]
  return parts.join(', ') + (sample === undefined ? '' : `; first: ${sample}`)
}

async function preflight (server: ServerProcess, s: Scenario, apiKey: string, item: string | PooledRequest | undefined): Promise<void> {
  const [body, headers] = typeof item === 'object' ? [item.body, item.headers] : [item, {}]
  const response = await fetch(`${server.url}${s.path}`, {
    method: s.method,
    headers: { ...(s.apiKey ? { authorization: `Bearer ${apiKey}` } : {}), ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
    ...(body === undefined ? {} : { body })
  })
  const text = await response.text()
  if (!response.ok || !text.includes(s.expect)) {
    throw new Error(`preflight ${s.method} ${s.path}: ${response.status} ${text.slice(0, 300)}`)
  }
}

/** The Redis a scenario's server uses: the shared one (sharedTarget), or one of --replication's own. */
export interface RedisTarget {
  url: string
  /** The bench's connection to it: fill, rotation count, cleanup of the scenario's keys. */
  client: Redis | null
  /** Whose CPU is the "redis" column (a primary and its replica: both). */
  cpu: Redis | readonly Redis[] | null
}

function sharedTarget (run: RunContext): RedisTarget {
  return { url: run.options.redisUrl, client: run.redis, cpu: run.redis }
}

export interface RunScenarioOptions {
  ceilingRps: number | null
  /** Default: the shared Redis. */
  target?: RedisTarget
  /** Settings for the Rotor child on top of rotorEnv's (and --server-env's). */
  env?: Record<string, string>
  /** After the rotation count (the server stopped), before the scenario's keys are deleted. */
  afterRun?: (run: { prefix: string, answered2xx: number, sent: number }) => Promise<void>
  fillEntries?: number
  /** Soak: keep the server up and hand it over instead of stopping it. */
  keepServer?: boolean
  exposeGc?: boolean
}

export async function runScenario (run: RunContext, s: Scenario, opts: RunScenarioOptions): Promise<{ result: ScenarioResult, server: ServerProcess | null, minter: Minter | null, prefix: string, rotations: number, sent: number }> {
  const prefix = `${run.prefix}${++run.scenarioCount}:`
  const target = opts.target ?? sharedTarget(run)
  // Proofs are signed when the pool is minted, before the run: they must stay acceptable through it.
  const proofAge = s.body === 'refresh-dpop' ? { DPOP_PROOF_MAX_AGE: `${Math.ceil(run.options.warmup + run.options.duration * 3) + 300}s` } : {}
  const env = s.server !== 'hello' ? rotorEnv(run, s.algorithm, prefix, { ...proofAge, ...(opts.target === undefined ? {} : { REDIS_URL: target.url }), ...s.env, ...opts.env }) : {}
  const shownEnv = Object.fromEntries(Object.entries(env).filter(([key]) => !['API_KEYS', 'JWT_SECRET', 'JWT_KEYS_FILE'].includes(key)))
  const result: ScenarioResult = {
    name: s.name,
    label: s.label,
    redisKeyPrefix: prefix,
    denylistEntries: opts.fillEntries ?? 0,
    fill: null,
    server: { kind: s.server, algorithm: s.server === 'hello' ? null : s.algorithm, env: shownEnv },
    warmup: null,
    measured: null,
    attempts: 0,
    tokensMinted: 0,
    ratioToCeiling: null,
    cpu: null,
    redisCheck: null,
    cleanup: null,
    error: null
  }
  run.say(`\n▶ ${s.label} (Redis keys under ${prefix})`)
  let server: ServerProcess | null = null
  let minter: Minter | null = null
  let rotations2xx = 0
  let tokensSent = 0
  try {
    if (opts.fillEntries !== undefined && opts.fillEntries > 0) {
      if (target.client === null) throw new Error('no Redis connection')
      run.say(`  filling the denylist with ${fmtInt(opts.fillEntries)} records …`)
      const fill = await fillDenylist(target.client, target.url, prefix, opts.fillEntries, 7 * 86_400_000)
      result.fill = fill
      run.say(`  filled in ${fill.seconds.toFixed(1)} s (${fmtInt(fill.perSecond)} SET/s); used_memory +${fmtMiB(fill.usedMemoryAfter - fill.usedMemoryBefore)}`)
      run.say(`  bytes per record: ${fill.bytesPerEntryUsedMemory.toFixed(1)} (INFO used_memory delta / N), ${fill.bytesPerEntryMemoryUsage.toFixed(1)} (MEMORY USAGE, mean of ${fill.sampled} keys); key ${fill.keyLength} bytes, e.g. ${fill.exampleKey}`)
    }

    server = await ServerProcess.start(s.server, env, { exposeGc: opts.exposeGc === true, cpus: run.options.serverCpus, ...(run.options.profile ? { profileDir: resultsDir(), profileName: `${run.scenarioCount}-${s.name}` } : {}) })
    run.say(`  server pid ${server.pid} at ${server.url}`)
    if (s.body !== 'none' && s.body !== 'issue') minter = new Minter(env, run.options.sessions)
    const refreshUrl = `${server.url}${s.path}`

    const pool = new BodyPool()
    // Bodies used round and round (not one use each): issue's, and the hot introspection's tokens.
    const cycled = s.body === 'issue' ? issueBodies() : s.body === 'introspect-hot' && minter !== null ? minter.introspectBodies(256) : []
    let cycledIndex = 0
    const bodyFor = (): (() => string | PooledRequest | undefined) | undefined => {
      if (s.body === 'none') return undefined
      if (cycled.length > 0) return () => cycled[cycledIndex++ % cycled.length]
      return pool.next
    }
    const mintInto = (n: number): void => {
      if (minter === null) return
      const started = process.hrtime.bigint()
      pool.fill(mint(minter, s.body, n, refreshUrl))
      result.tokensMinted += n
      run.say(`  minted ${fmtInt(n)} distinct ${s.body === 'refresh' || s.body === 'refresh-one-key' ? 'refresh' : s.body === 'refresh-dpop' ? 'bound refresh tokens and proofs:' : 'access'} tokens in ${(Number(process.hrtime.bigint() - started) / 1e9).toFixed(1)} s`)
    }

    // One request first: a wrong setting shows as a clear message, not as a wall of non-2xx.
    const first = s.body === 'none' ? undefined : cycled.length > 0 ? cycled[0] : minter === null ? undefined : mint(minter, s.body, 1, refreshUrl)[0]
    if (minter !== null) result.tokensMinted += 1
    await preflight(server, s, run.apiKey, first)
    if (s.rotates) rotations2xx += 1
    tokensSent += 1

    const source = bodyFor()
    const url = server.url
    const load = async (duration: number, limit: number | undefined): Promise<LoadResult> => runLoad({
      url,
      method: s.method,
      path: s.path,
      ...(s.apiKey ? { headers: { authorization: `Bearer ${run.apiKey}` } } : {}),
      ...(source === undefined ? {} : { body: source }),
      ...(limit === undefined ? {} : { limit }),
      duration,
      connections: run.options.connections,
      verify: (body) => body.includes(s.expect)
    })
    const pooled = s.body === 'refresh' || s.body === 'refresh-one-key' || s.body === 'refresh-dpop' || s.body === 'introspect'
    // Nothing beats the ceiling.
    const guess = opts.ceilingRps ?? 25_000

    let warmRps = guess
    if (run.options.warmup > 0) {
      // The warm-up may run short of tokens: it then just ends early (nothing is measured).
      if (pooled) mintInto(Math.ceil(Math.min(guess, 25_000) * run.options.warmup) + 1000)
      const warm = await load(run.options.warmup, pooled ? pool.size : undefined)
      if (s.rotates) rotations2xx += warm.statusCodes['200'] ?? 0
      tokensSent += warm.bodiesUsed
      result.warmup = { seconds: warm.seconds, rps: warm.rps, non2xx: warm.non2xx, errors: warm.errors + warm.timeouts }
      warmRps = warm.rps
      run.say(`  warm-up ${warm.seconds.toFixed(1)} s: ${fmtInt(warm.rps)} req/s`)
      if (unhealthy(warm)) run.fail(`${s.label}: warm-up: ${describeFailures(warm)}`)
    }

    let measured: LoadResult | null = null
    // Enough distinct tokens for the whole duration: the warm-up's rate with a wide margin (a cold
    // warm-up can be slow), but at least half the ceiling's; if it still runs out, mint more and
    // measure again rather than ever sending a token twice.
    let poolSize = Math.ceil(Math.max(warmRps * 2.5, (opts.ceilingRps ?? 0) * 0.5) * run.options.duration) + 2000
    for (let attempt = 1; attempt <= 2; attempt++) {
      result.attempts = attempt
      if (pooled) mintInto(poolSize)
      run.say(`  measuring ${run.options.duration} s with ${run.options.connections} connections${attempt > 1 ? ` (attempt ${attempt})` : ''} …`)
      const before = await cpuSnapshot(server, target.cpu)
      measured = await load(run.options.duration, pooled ? pool.size : undefined)
      result.cpu = cpuShare(before, await cpuSnapshot(server, target.cpu))
      if (s.rotates) rotations2xx += measured.statusCodes['200'] ?? 0
      tokensSent += measured.bodiesUsed
      if (!measured.exhausted) break
      if (unhealthy(measured)) run.fail(`${s.label}: attempt ${attempt}: ${describeFailures(measured)}`)
      run.say(`  the token pool (${fmtInt(poolSize)}) ran out after ${measured.seconds.toFixed(1)} s: minting more and measuring again`)
      poolSize *= 3
    }
    if (measured === null) throw new Error('nothing measured')
    result.measured = measured
    if (measured.exhausted) run.fail(`${s.label}: the pool of distinct tokens ran out twice; the run is shorter than --duration`)
    if (unhealthy(measured)) run.fail(`${s.label}: ${describeFailures(measured)}`)
    if (opts.ceilingRps !== null && s.server !== 'hello') result.ratioToCeiling = measured.rps / opts.ceilingRps
    run.say(`  ${fmtInt(measured.rps)} req/s, p50 ${fmtMs(measured.latency.p50)} ms, p99 ${fmtMs(measured.latency.p99)} ms, p99.9 ${fmtMs(measured.latency.p999)} ms, non-2xx ${measured.non2xx}`)
    if (result.cpu !== null) run.say(`  ${cpuLine(result.cpu)}`)
    if (result.cpu?.others !== null && result.cpu?.others !== undefined && result.cpu.others > 0.25) {
      const warning = `${s.label}: other processes used ${result.cpu.others.toFixed(2)} cores during the measurement: its numbers are low and noisy`
      run.warnings.push(warning)
      run.say(`  warning: ${warning}`)
    }

    if (opts.keepServer === true) return { result, server, minter, prefix, rotations: rotations2xx, sent: tokensSent }
    await server.stop()
    server = null
    if (s.rotates) result.redisCheck = await checkRotations(run, target.client, prefix, opts.fillEntries ?? 0, rotations2xx, tokensSent)
    if (opts.afterRun !== undefined) await opts.afterRun({ prefix, answered2xx: rotations2xx, sent: tokensSent })
  } catch (error) {
    result.error = error instanceof Error ? error.message : String(error)
    run.fail(`${s.label}: ${result.error}`)
  } finally {
    if (server !== null && opts.keepServer !== true) await server.stop()
    if (target.client !== null && opts.keepServer !== true && s.server !== 'hello') {
      const started = process.hrtime.bigint()
      const keysDeleted = await deletePrefix(target.client, prefix)
      result.cleanup = { keysDeleted, seconds: Number(process.hrtime.bigint() - started) / 1e9 }
      if (keysDeleted > 10_000) run.say(`  cleanup: deleted ${fmtInt(keysDeleted)} keys in ${result.cleanup.seconds.toFixed(1)} s (SCAN + DEL)`)
    }
  }
  return { result, server: opts.keepServer === true ? server : null, minter, prefix, rotations: rotations2xx, sent: tokensSent }
}
