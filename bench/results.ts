import { writeFileSync } from 'node:fs'
import { cpus, loadavg, totalmem } from 'node:os'
import type { Redis } from 'ioredis'
import { resultsDir } from './context.js'
import { unhealthy } from './load.js'
import { redisVersion, type FillResult } from './redis.js'
import { fmtInt, latencyCells, median, shortCount, table } from './report.js'
import type { ScenarioResult } from './scenarios.js'
import { cpuUsPerRequest, serverCpuUs } from './floor.js'

/** What a run leaves: the tables printed at its end, and bench/results/<timestamp>.json. */

export interface Machine { cpus: number, cpuModel: string, memoryBytes: number, node: string, platform: string, redis: string, loadAverageAtStart: number[] }

/** `shared`: the bench's connection to the shared Redis, null when the run does not use it. */
export async function describeMachine (shared: Redis | null): Promise<Machine> {
  return {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memoryBytes: totalmem(),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    redis: shared === null ? 'not used' : await redisVersion(shared),
    loadAverageAtStart: loadavg()
  }
}

/** One row per scenario measured or failed, in the order they ran. */
export function resultsTable (results: ScenarioResult[]): string {
  const rows = results.filter((r) => r.measured !== null || r.error !== null).map((r) => {
    const m = r.measured
    if (m === null) return [`!! ${r.label}`, 'FAILED', '', '', '', '', '', '', '', '', '', '']
    const bad = unhealthy(m) || m.exhausted
    const cores = (n: number | null | undefined): string => n === null || n === undefined ? '?' : n.toFixed(2)
    return [
      `${bad ? '!! ' : ''}${r.label}`,
      fmtInt(m.rps),
      ...latencyCells(m.latency),
      String(m.non2xx),
      String(m.errors + m.timeouts),
      r.ratioToCeiling === null ? (r.name === 'hello' ? '1.000' : '') : r.ratioToCeiling.toFixed(3),
      cores(r.cpu?.server), cores(r.cpu?.bench), cores(r.cpu?.redis), cores(r.cpu?.others)
    ]
  })
  return table(['scenario', 'req/s', 'p50 ms', 'p99 ms', 'p99.9 ms', 'non-2xx', 'errors', '× ceiling', 'CPU server', 'bench', 'redis', 'others'], rows)
}

/**
 * Rotor against the naive reference of the same algorithm, when the run measured both: with
 * --reps, the medians of the reps, and the median of each rep's ratio (Rotor's rep k against the
 * naive service's rep k, which ran next to it).
 */
export interface NaiveRow {
  label: string
  reps: number
  rotorRps: number
  naiveRps: number
  ratio: number
  rotorCpuUs: number | null
  naiveCpuUs: number | null
  /** Redis's CPU per refresh: what bounds a fleet's refreshes, Redis being one process shared by every instance. */
  rotorRedisUs: number | null
  naiveRedisUs: number | null
  rotorP99Ms: number
}

/** Rotor's scenario, the reference's, and how the row names the reference (none: the default one). */
const NAIVE_PAIRS = [['refresh', 'naive', ''], ['refresh', 'naive-one-key', ', one-key naive'], ['refresh-hs256', 'naive-hs256', '']] as const

function medianOrNull (values: Array<number | null>): number | null {
  const known = values.filter((v): v is number => v !== null)
  return known.length === 0 ? null : median(known)
}

export function naiveRows (results: ScenarioResult[]): NaiveRow[] {
  const rows: NaiveRow[] = []
  for (const [rotorName, naiveName, suffix] of NAIVE_PAIRS) {
    const rotor = results.filter((r) => r.name === rotorName && r.fill === null && r.measured !== null)
    const naive = results.filter((r) => r.name === naiveName && r.measured !== null)
    const reps = Math.min(rotor.length, naive.length)
    if (reps === 0) continue
    const rps = (r: ScenarioResult): number => r.measured!.rps
    rows.push({
      label: rotor[0]!.label.replace(/ #\d+$/, '') + suffix,
      reps,
      rotorRps: median(rotor.map(rps)),
      naiveRps: median(naive.map(rps)),
      ratio: median(rotor.slice(0, reps).map((r, i) => rps(r) / rps(naive[i]!))),
      rotorCpuUs: medianOrNull(rotor.map(serverCpuUs)),
      naiveCpuUs: medianOrNull(naive.map(serverCpuUs)),
      rotorRedisUs: medianOrNull(rotor.map((r) => cpuUsPerRequest(r, 'redis'))),
      naiveRedisUs: medianOrNull(naive.map((r) => cpuUsPerRequest(r, 'redis'))),
      rotorP99Ms: median(rotor.map((r) => r.measured!.latency.p99))
    })
  }
  return rows
}

export function naiveTable (rows: NaiveRow[]): string {
  const us = (n: number | null): string => n === null ? '?' : n.toFixed(0)
  const reps = rows[0]?.reps ?? 1
  const lines = table(['against the naive reference', 'Rotor req/s', 'naive req/s', '× naive', 'Rotor CPU µs/req', 'naive CPU µs/req', 'Redis µs/req Rotor', 'naive', 'Rotor p99 ms'],
    rows.map((r) => [r.label, fmtInt(r.rotorRps), fmtInt(r.naiveRps), r.ratio.toFixed(2), us(r.rotorCpuUs), us(r.naiveCpuUs), us(r.rotorRedisUs), us(r.naiveRedisUs), r.rotorP99Ms.toFixed(1)]))
  const note = '(Redis µs/req: Redis\'s CPU per refresh; where Redis shares a core with the load generator, it sets the pace)'
  return reps > 1 ? `${lines}\n(medians of ${reps} reps; × naive: the median of each rep's ratio)\n${note}` : `${lines}\n${note}`
}

/** --denylist-sizes: refresh against N records already in Redis. */
export interface DenylistRow { entries: number, fill: FillResult | null, rps: number | null, ratioToRefresh: number | null }

export function denylistTable (denylist: DenylistRow[]): string {
  return table(['denylist records', 'bytes/record (used_memory)', 'bytes/record (MEMORY USAGE)', 'refresh req/s', '× empty denylist'],
    denylist.map((d) => [shortCount(d.entries), d.fill === null ? '' : d.fill.bytesPerEntryUsedMemory.toFixed(1), d.fill === null ? '' : d.fill.bytesPerEntryMemoryUsage.toFixed(1),
      d.rps === null ? 'FAILED' : fmtInt(d.rps), d.ratioToRefresh === null ? '' : d.ratioToRefresh.toFixed(3)]))
}

export function writeResults (startedAt: Date, data: unknown): string {
  const dir = resultsDir()
  const path = `${dir}${startedAt.toISOString().replace(/[:.]/g, '-')}.json`
  writeFileSync(path, `${JSON.stringify(data, null, 2)}\n`)
  return path
}
