import { parseArgs } from 'node:util'
import { CPU_LIST } from './pinning.js'
import { SESSIONS } from './tokens.js'

/** The command line of bench/run.ts (documented in its header comment and in bench/README.md). */

const SCENARIO_NAMES = ['hello', 'issue', 'refresh', 'refresh-hs256', 'refresh-dpop', 'naive', 'naive-one-key', 'naive-hs256', 'introspect', 'introspect-hot', 'jwks'] as const
export type ScenarioName = typeof SCENARIO_NAMES[number]

export interface Options {
  duration: number
  warmup: number
  connections: number
  /** --reps: how many times each scenario runs, in rounds (every scenario once, then again); the tables give medians. */
  reps: number
  scenarios: ScenarioName[]
  scenariosGiven: boolean
  denylistSizes: number[]
  /** --session-memory: sessions per subject to weigh the session index at; empty: not measured. */
  sessionMemory: number[]
  soak: number | null
  replication: boolean
  serverEnv: Record<string, string>
  /** --there-env: settings for the other server of --against only (e.g. `--against . --there-env LOG_LEVEL=warn`). */
  thereEnv: Record<string, string>
  /**
   * --there-denylist: records in the other server's denylist, for --against with --redis-cpus: that
   * server gets a redis-server of its own, filled first (`--against . --there-denylist 5m`: what a
   * full denylist costs, slice by slice); 0: the same Redis as this checkout's.
   */
  thereDenylist: number
  /** --sessions: how many sessions the refresh tokens take turns in (bench/tokens.ts SESSIONS); 0: a new one per token. */
  sessions: number
  profile: boolean
  /** --server-cpus / --loadgen-cpus: CPU lists (taskset's) the server child and this process are pinned to; null: not pinned. */
  serverCpus: string | null
  loadgenCpus: string | null
  /**
   * --redis-cpus: a CPU list for a redis-server of the bench's own (free port, stopped at the end),
   * used instead of the shared Redis for the whole run; null: the shared Redis, unpinned.
   */
  redisCpus: string | null
  /** --against: another checkout (built) whose Rotor this one's refresh is measured against; null: none. */
  against: string | null
  redisUrl: string
}

export const USAGE = `usage: node dist/bench/run.js [--duration N] [--warmup N] [--connections N] [--reps N]
         [--scenarios ${SCENARIO_NAMES.join(',')}] [--denylist-sizes 10000,1000000]
         [--session-memory 1,10,100] [--soak SECONDS] [--replication] [--server-env KEY=VALUE ...] [--there-env KEY=VALUE ...] [--there-denylist N] [--sessions N] [--profile]
         [--server-cpus LIST --loadgen-cpus LIST --redis-cpus LIST] [--against DIR|naive|naive-one-key]`

class UsageError extends Error {}

/** KEY=VALUE pairs of a repeatable option. */
function settings (option: string, pairs: string[] | undefined): Record<string, string> {
  const env: Record<string, string> = {}
  for (const pair of pairs ?? []) {
    const at = pair.indexOf('=')
    if (at < 1) throw new UsageError(`--${option} ${pair}: expected KEY=VALUE`)
    env[pair.slice(0, at)] = pair.slice(at + 1)
  }
  return env
}

function positive (name: string, text: string | undefined, fallback: number, min = 1): number {
  if (text === undefined) return fallback
  const value = Number(text)
  if (!Number.isFinite(value) || value < min) throw new UsageError(`--${name} ${text}: expected a number of at least ${min}`)
  return value
}

function counts (option: string, text: string | undefined): number[] {
  return (text ?? '').split(',').filter((s) => s.trim() !== '').map((item) => {
    const match = /^(\d+(?:\.\d+)?)([km]?)$/i.exec(item.trim())
    if (match === null) throw new UsageError(`--${option}: "${item}" is not a count (e.g. 10000, 10k, 1m)`)
    const value = Number(match[1]) * ({ '': 1, k: 1e3, m: 1e6 }[String(match[2]).toLowerCase()] ?? 1)
    if (!Number.isInteger(value) || value < 1) throw new UsageError(`--${option}: "${item}" is not a whole positive count`)
    return value
  })
}

export function parseOptions (argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      duration: { type: 'string' },
      warmup: { type: 'string' },
      connections: { type: 'string' },
      reps: { type: 'string' },
      scenarios: { type: 'string' },
      'denylist-sizes': { type: 'string' },
      'session-memory': { type: 'string' },
      soak: { type: 'string' },
      replication: { type: 'boolean' },
      'server-env': { type: 'string', multiple: true },
      'there-env': { type: 'string', multiple: true },
      'there-denylist': { type: 'string' },
      sessions: { type: 'string' },
      profile: { type: 'boolean' },
      'server-cpus': { type: 'string' },
      'loadgen-cpus': { type: 'string' },
      'redis-cpus': { type: 'string' },
      against: { type: 'string' },
      help: { type: 'boolean', short: 'h' }
    }
  })
  if (values.help === true) {
    process.stdout.write(`${USAGE}\n`)
    process.exit(0)
  }
  const scenarios: ScenarioName[] = []
  if (values.scenarios !== undefined) {
    for (const item of values.scenarios.split(',').map((s) => s.trim()).filter((s) => s !== '')) {
      const found = SCENARIO_NAMES.find((name) => name === item)
      if (found === undefined) throw new UsageError(`--scenarios: unknown "${item}" (expected ${SCENARIO_NAMES.join(', ')})`)
      if (!scenarios.includes(found)) scenarios.push(found)
    }
    if (scenarios.length === 0) throw new UsageError('--scenarios: name at least one')
  }
  const serverEnv = settings('server-env', values['server-env'])
  const thereEnv = settings('there-env', values['there-env'])
  const denylistSizes = counts('denylist-sizes', values['denylist-sizes'])
  const replication = values.replication === true
  const sessionMemory = counts('session-memory', values['session-memory'])
  if (replication && values.soak !== undefined) throw new UsageError('--replication and --soak: one at a time')
  const against = values.against ?? null
  if (against === null && Object.keys(thereEnv).length > 0) throw new UsageError('--there-env: only with --against')
  const thereDenylist = counts('there-denylist', values['there-denylist'])
  if (thereDenylist.length > 1) throw new UsageError('--there-denylist: one count')
  if (thereDenylist.length > 0 && (against === null || values['redis-cpus'] === undefined)) {
    throw new UsageError('--there-denylist: only with --against and --redis-cpus (the filled denylist gets a redis-server of its own)')
  }
  if (against !== null && (replication || values.soak !== undefined || denylistSizes.length > 0 || sessionMemory.length > 0)) {
    throw new UsageError('--against: alone, or with --scenarios refresh and/or refresh-hs256')
  }
  if (against !== null && scenarios.some((name) => name !== 'refresh' && name !== 'refresh-hs256')) {
    throw new UsageError('--against measures refresh only: --scenarios refresh, refresh-hs256 or both')
  }
  for (const option of ['server-cpus', 'loadgen-cpus', 'redis-cpus'] as const) {
    const list = values[option]
    if (list !== undefined && !CPU_LIST.test(list)) throw new UsageError(`--${option} ${list}: expected a CPU list such as 1, 0-3 or 0,2`)
  }
  return {
    duration: positive('duration', values.duration, 10),
    warmup: positive('warmup', values.warmup, 2, 0),
    connections: Math.floor(positive('connections', values.connections, 32)),
    reps: Math.floor(positive('reps', values.reps, 1)),
    scenarios: scenarios.length > 0 ? scenarios : denylistSizes.length > 0 || sessionMemory.length > 0 || replication ? [] : [...SCENARIO_NAMES],
    scenariosGiven: scenarios.length > 0,
    denylistSizes,
    sessionMemory,
    soak: values.soak === undefined ? null : positive('soak', values.soak, 0, 10),
    replication,
    serverEnv,
    thereEnv,
    thereDenylist: thereDenylist[0] ?? 0,
    sessions: Math.floor(positive('sessions', values.sessions, SESSIONS, 0)),
    profile: values.profile === true,
    serverCpus: values['server-cpus'] ?? null,
    loadgenCpus: values['loadgen-cpus'] ?? null,
    redisCpus: values['redis-cpus'] ?? null,
    against,
    redisUrl: process.env['TEST_REDIS_URL'] ?? 'redis://127.0.0.1:6379'
  }
}
