import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import { ServerProcess } from './child.js'
import type { RunContext } from './context.js'
import { cpuShare, cpuSnapshot } from './cpu.js'
import { runLoad, unhealthy } from './load.js'
import { pinToCpus } from './pinning.js'
import { fillDenylist } from './redis.js'
import { BenchRedis } from './replication.js'
import { fmtInt, fmtMiB, median } from './report.js'
import { describeFailures, rotorEnv } from './scenarios.js'
import { Minter } from './tokens.js'

/**
 * --against DIR: this checkout's Rotor against another checkout's (built), or against the naive
 * reference (`--against naive`), refresh only, in
 * alternating slices of SLICE_SECONDS of full load, so that a machine whose speed drifts (a shared
 * VM: ±15 % between identical runs) slows both alike. Each slice's server CPU per refresh is
 * compared with the other server's next to it; the median of those ratios is the answer. Both
 * servers get the same settings and keys (each its own key prefix) and distinct tokens.
 */
const SLICE_SECONDS = 1.5

export interface AgainstRow {
  algorithm: 'EdDSA' | 'HS256'
  other: string
  /** Per slice, server CPU µs per refresh and req/s: here, there. */
  slices: Array<{ here: { us: number, rps: number }, there: { us: number, rps: number } }>
  medianUsHere: number
  medianUsThere: number
  /** here / there of CPU per refresh, slice by slice: median, lowest, highest. */
  ratio: { median: number, min: number, max: number }
  /** here / there of req/s, slice by slice: median, lowest, highest. */
  rpsRatio: { median: number, min: number, max: number }
}

function spread (values: number[]): { median: number, min: number, max: number } {
  return { median: median(values), min: Math.min(...values), max: Math.max(...values) }
}

type Start = typeof ServerProcess.start

/** The other checkout's server starter, or a usage error that says how to build it. */
export async function otherStarter (dir: string): Promise<Start> {
  const child = resolve(dir, 'dist/bench/child.js')
  if (!existsSync(child)) throw new Error(`--against ${dir}: no ${child}; build that checkout first: (cd ${dir} && npm ci && npm run build)`)
  const module = await import(pathToFileURL(child).href) as { ServerProcess: { start: Start } }
  return module.ServerProcess.start.bind(module.ServerProcess)
}

function describeCheckout (dir: string): string {
  try {
    return `${dir} at ${execFileSync('git', ['-C', dir, 'log', '-1', '--format=%h %s'], { encoding: 'utf8' }).trim().slice(0, 80)}`
  } catch {
    return dir
  }
}

/**
 * `--against naive` / `--against naive-one-key`: the naive reference of this checkout
 * (bench/naive.ts), its refresh tokens under Rotor's refresh key or under the access-token key,
 * instead of another checkout's Rotor.
 */
const NAIVE = { naive: 'refresh', 'naive-one-key': 'access' } as const

function isNaive (dir: string): dir is keyof typeof NAIVE {
  return Object.hasOwn(NAIVE, dir)
}

export async function runAgainst (run: RunContext, dir: string, algorithms: Array<'EdDSA' | 'HS256'>): Promise<AgainstRow[]> {
  const naive = isNaive(dir) ? NAIVE[dir] : null
  const startThere: Start = naive !== null ? async (_kind, env, options) => await ServerProcess.start('naive', { ...env, NAIVE_REFRESH_KEY: naive }, options) : await otherStarter(dir)
  const other = naive === null ? describeCheckout(dir) : `the naive reference (bench/naive.ts${naive === 'access' ? ', one key' : ''})`
  const filled = run.options.thereDenylist
  const rows: AgainstRow[] = []
  for (const algorithm of algorithms) {
    run.say(`\n▶ refresh (${algorithm}): this checkout against ${other}${filled > 0 ? `, whose denylist holds ${fmtInt(filled)} records` : ''}`)
    const envHere = rotorEnv(run, algorithm, `${run.prefix}${++run.scenarioCount}:`)
    const prefixThere = `${run.prefix}${++run.scenarioCount}:`
    const redisThere = filled > 0 ? await filledRedis(run, prefixThere, filled) : null
    const envThere = rotorEnv(run, algorithm, prefixThere, { ...(redisThere === null ? {} : { REDIS_URL: redisThere.url }), ...run.options.thereEnv })
    const cpus = { cpus: run.options.serverCpus }
    const servers: { here: ServerProcess | null, there: ServerProcess | null } = { here: null, there: null }
    try {
      servers.here = await ServerProcess.start('rotor', envHere, cpus)
      servers.there = await startThere('rotor', envThere, cpus)
      // The same keys: one minter serves both.
      const minter = new Minter(envHere, run.options.sessions)
      let rate = 10_000
      const slice = async (which: 'here' | 'there', seconds: number): Promise<{ us: number, rps: number }> => {
        const server = servers[which]!
        const count = Math.ceil(rate * seconds * 2.5) + 500
        const bodies = which === 'there' && naive === 'access' ? minter.oneKeyRefreshBodies(count) : minter.refreshBodies(count)
        let next = 0
        const before = await cpuSnapshot(server, run.redis)
        const result = await runLoad({
          url: server.url,
          method: 'POST',
          path: '/v1/tokens/refresh',
          body: () => bodies[next++],
          limit: bodies.length,
          duration: seconds,
          connections: run.options.connections,
          verify: (body) => body.includes('"refresh_token"')
        })
        const cpu = cpuShare(before, await cpuSnapshot(server, run.redis))
        if (unhealthy(result)) run.fail(`refresh (${algorithm}) ${which === 'here' ? 'here' : `by ${other}`}: ${describeFailures(result)}`)
        rate = Math.max(rate, result.rps)
        return { us: result.responses === 0 ? NaN : 1e6 * cpu.server * cpu.seconds / result.responses, rps: result.rps }
      }
      if (run.options.warmup > 0) {
        await slice('here', run.options.warmup)
        await slice('there', run.options.warmup)
      }
      const count = Math.max(4, Math.round(run.options.duration / SLICE_SECONDS))
      const slices: AgainstRow['slices'] = []
      for (let i = 0; i < count; i++) {
        // Alternating which goes first, so neither always follows the other's load.
        const first = i % 2 === 0 ? 'here' : 'there'
        const a = await slice(first, SLICE_SECONDS)
        const b = await slice(first === 'here' ? 'there' : 'here', SLICE_SECONDS)
        const pair = first === 'here' ? { here: a, there: b } : { here: b, there: a }
        slices.push(pair)
        run.say(`  slice ${i + 1}/${count}: here ${pair.here.us.toFixed(0)} µs/refresh (${fmtInt(pair.here.rps)} req/s), there ${pair.there.us.toFixed(0)} µs (${fmtInt(pair.there.rps)} req/s)`)
      }
      rows.push({
        algorithm,
        other: filled > 0 ? `${other}, ${fmtInt(filled)} records in its denylist` : other,
        slices,
        medianUsHere: median(slices.map((s) => s.here.us)),
        medianUsThere: median(slices.map((s) => s.there.us)),
        ratio: spread(slices.map((s) => s.here.us / s.there.us)),
        rpsRatio: spread(slices.map((s) => s.here.rps / s.there.rps))
      })
    } finally {
      await Promise.all([servers.here?.stop(), servers.there?.stop(), redisThere?.stop()])
    }
  }
  return rows
}

/**
 * `--there-denylist N`: a redis-server of the bench's own for the other server, pinned where the
 * run's Redis is (`--redis-cpus`), filled with N records shaped as Rotor writes them. The two
 * servers then differ in their denylist alone, and each slice's neighbour is the empty one.
 */
async function filledRedis (run: RunContext, prefix: string, entries: number): Promise<BenchRedis> {
  const redis = await BenchRedis.start()
  try {
    pinToCpus(redis.pid, run.options.redisCpus!)
    run.say(`  filling the other server's denylist (redis-server pid ${redis.pid}) with ${fmtInt(entries)} records …`)
    const fill = await fillDenylist(redis.client, redis.url, prefix, entries)
    run.say(`  filled in ${fill.seconds.toFixed(1)} s; used_memory +${fmtMiB(fill.usedMemoryAfter - fill.usedMemoryBefore)}`)
    return redis
  } catch (error) {
    await redis.stop()
    throw error
  }
}

function fmtSpread (r: { median: number, min: number, max: number }): string {
  return `${r.median.toFixed(3)} (${r.min.toFixed(3)}–${r.max.toFixed(3)})`
}

/** One line per algorithm: CPU per refresh here and there, and the ratios (CPU, req/s) slice by slice. */
export function againstTable (rows: AgainstRow[]): string {
  const lines = ['refresh   µs/refresh here  µs/refresh there  CPU here / there          req/s here / there']
  for (const row of rows) {
    lines.push(`${row.algorithm.padEnd(8)}  ${row.medianUsHere.toFixed(1).padStart(15)}  ${row.medianUsThere.toFixed(1).padStart(16)}  ${fmtSpread(row.ratio).padEnd(24)}  ${fmtSpread(row.rpsRatio)}`)
  }
  lines.push(`(server CPU per refresh and req/s, here / there: the median, lowest and highest of ${rows[0]?.slices.length ?? 0} alternating ${SLICE_SECONDS} s slices each; there: ${rows[0]?.other ?? ''})`)
  return lines.join('\n')
}
