/**
 * Rotor's load-test harness: `npm run bench` (builds, then runs dist/bench/run.js).
 *
 *   --duration N          seconds measured per scenario (default 10)
 *   --warmup N            seconds of unmeasured warm-up per scenario (default 2)
 *   --connections N       concurrent connections (default 32)
 *   --scenarios a,b       any of: hello, issue, refresh, refresh-hs256, introspect, introspect-hot, jwks (default all;
 *                         hello, the ceiling, always runs first so every ratio is of this run)
 *   --denylist-sizes N,M  fill Redis with N (then M) live rotated-token records before measuring
 *                         refresh; prints bytes per record. Accepts 10k, 1m.
 *   --soak SECONDS        only refresh: its maximum rate, then half of it for SECONDS, reporting the
 *                         server's memory and the interval's p99 every minute (every 10 s below 300 s)
 *   --replication         the cost of guarding against asynchronous-replication loss, on refresh:
 *                         starts the bench's OWN redis-servers (free ports, never the shared Redis) and
 *                         measures refresh against a lone one (the reference), then against a primary
 *                         with one replica: (a) as is (asynchronous), (b) the primary with
 *                         min-replicas-to-write 1 + min-replicas-max-lag 10 (CONFIG SET, unset after),
 *                         (c) Rotor with REDIS_WAIT_REPLICAS=1. Alone, only hello runs besides (and the
 *                         shared Redis is not needed); with --scenarios/--denylist-sizes, those too.
 *   --server-env K=V      extra setting for the Rotor child (repeatable), e.g. RATE_LIMIT_ALLOW=127.0.0.1
 *   --profile             run each server child with --cpu-prof; profiles go to bench/results/
 *
 * The server under test runs in a child process (bench/server.ts); autocannon runs here. Redis:
 * TEST_REDIS_URL or redis://127.0.0.1:6379, under a prefix of this run only, deleted afterwards
 * with SCAN + DEL (never FLUSH). --replication's redis-servers are the bench's own, stopped by PID
 * on every exit path. Results: a table on stdout and bench/results/<timestamp>.json.
 * Any error, timeout, non-2xx or unexpected body fails the run loudly and exits 1.
 */
import { cpus, loadavg, totalmem } from 'node:os'
import { killAllServers } from './child.js'
import { RunContext } from './context.js'
import { stopCurrentLoad, type LatencySummary } from './load.js'
import { parseOptions, USAGE, type Options, type ScenarioName } from './options.js'
import { connectRedis, countKeys, deletePrefix, escapeGlob, redisVersion, usedMemory, type FillResult } from './redis.js'
import { BenchRedis, killAllRedisServers, ReplicatedRedis, until, type ReplicationState } from './replication.js'
import { fmtInt, fmtMiB, fmtMs, latencyCells, loudFailures, table } from './report.js'
import { writeResults } from './results.js'
import { runScenario, scenario, unhealthy, type RedisTarget, type RunScenarioOptions, type ScenarioResult } from './scenarios.js'
import { runSoak, type SoakReport } from './soak.js'
import { removeKeysFiles } from './tokens.js'

// ---------------------------------------------------------------- replication

type VariantId = 'lone' | 'a' | 'b' | 'c'

interface ReplicationVariant {
  id: VariantId
  /** The scenario's name in `scenarios`. */
  scenario: string
  label: string
  setup: string
  rps: number | null
  latency: LatencySummary | null
  non2xx: number | null
  ratioToCeiling: number | null
  /**
   * CPU time per request (µs): the server child's, and Redis's (primary + replica). Less sensitive
   * to other load on the machine than req/s: the server is the bottleneck, and a starved server
   * answers fewer requests but spends about the same per request.
   */
  serverCpuUsPerRequest: number | null
  redisCpuUsPerRequest: number | null
  /** Against (a), the primary with an asynchronous replica and nothing else. */
  againstAsync: Comparison | null
  replicationBefore: ReplicationState | null
  replicationAfter: ReplicationState | null
  /** (c): rotated-token records the replica held right after the run (at least one per 2xx). */
  replicaRecords: { found: number, answered2xx: number, sent: number, ok: boolean } | null
}

interface Comparison { rpsRatio: number, p50DeltaMs: number, p99DeltaMs: number, p999DeltaMs: number, serverCpuUsDelta: number | null, redisCpuUsDelta: number | null }

interface ReplicationReport {
  redisVersion: string | null
  servers: Record<'lone' | 'primary' | 'replica', { port: number, pid: number } | null>
  variants: ReplicationVariant[]
  /** The lines printed under the table. */
  summary: string[]
}

const VARIANTS: Record<VariantId, { name: string, label: string, setup: string }> = {
  lone: { name: 'refresh-lone-redis', label: 'refresh (EdDSA), lone Redis (reference)', setup: 'a lone redis-server of the bench\'s own, no replica' },
  a: { name: 'refresh-replica-async', label: 'refresh (EdDSA), (a) async replica', setup: 'primary + 1 replica, asynchronous replication, nothing else' },
  b: { name: 'refresh-replica-min-replicas', label: 'refresh (EdDSA), (b) min-replicas-to-write 1', setup: 'primary + 1 replica, the primary with min-replicas-to-write 1, min-replicas-max-lag 10 (CONFIG SET)' },
  c: { name: 'refresh-replica-wait', label: 'refresh (EdDSA), (c) REDIS_WAIT_REPLICAS=1', setup: 'primary + 1 replica, Rotor with REDIS_WAIT_REPLICAS=1 (WAIT 1 <REDIS_WAIT_TIMEOUT_MS> after every denylist write)' }
}

function describeState (state: ReplicationState): string {
  return `link ${state.linkUp ? 'up' : 'DOWN'}, ${state.connectedReplicas} replica${state.connectedReplicas === 1 ? '' : 's'} connected${state.goodReplicas === null ? '' : `, ${state.goodReplicas} good (min-replicas)`}`
}

function signedMs (ms: number): string {
  return `${ms < 0 ? '−' : '+'}${fmtMs(Math.abs(ms))} ms`
}

/**
 * --replication: refresh against the bench's own redis-servers. First a lone one (the reference),
 * stopped after; then a primary with one replica, three ways: (a) as is, (b) the primary with
 * min-replicas-to-write, (c) Rotor with REDIS_WAIT_REPLICAS=1. Every run is a normal scenario
 * (fresh server child, preflight, warm-up, every response checked, rotations counted), so a
 * single non-2xx (a WAIT that timed out, a NOREPLICAS) fails the run.
 */
async function runReplication (run: RunContext, results: ScenarioResult[], ceilingRps: number | null): Promise<ReplicationReport> {
  const report: ReplicationReport = { redisVersion: null, servers: { lone: null, primary: null, replica: null }, variants: [], summary: [] }
  run.say('\n▶ replication: refresh against redis-servers of the bench\'s own (free ports; never the shared Redis)')

  const record = (id: VariantId, result: ScenarioResult, before: ReplicationState | null, after: ReplicationState | null, replicaRecords: ReplicationVariant['replicaRecords']): void => {
    const m = result.measured
    const perRequest = (cores: number | null | undefined): number | null => cores == null || m == null || m.rps === 0 ? null : cores / m.rps * 1e6
    report.variants.push({
      id,
      scenario: result.name,
      label: result.label,
      setup: VARIANTS[id].setup,
      rps: m?.rps ?? null,
      latency: m?.latency ?? null,
      non2xx: m?.non2xx ?? null,
      ratioToCeiling: result.ratioToCeiling,
      serverCpuUsPerRequest: perRequest(result.cpu?.server),
      redisCpuUsPerRequest: perRequest(result.cpu?.redis),
      againstAsync: null,
      replicationBefore: before,
      replicationAfter: after,
      replicaRecords
    })
  }
  const measure = async (id: VariantId, target: RedisTarget, env: Record<string, string>, afterRun?: RunScenarioOptions['afterRun']): Promise<ScenarioResult> => {
    const { name, label } = VARIANTS[id]
    const { result } = await runScenario(run, scenario('refresh', { name, label }), { ceilingRps, target, env, ...(afterRun === undefined ? {} : { afterRun }) })
    results.push(result)
    return result
  }

  // The reference: the same kind of server, alone.
  let lone: BenchRedis | null = null
  try {
    lone = await BenchRedis.start()
    report.servers.lone = { port: lone.port, pid: lone.pid }
    report.redisVersion = (await lone.info('server'))['redis_version'] ?? null
    run.say(`  lone redis-server ${report.redisVersion ?? '?'}: pid ${lone.pid}, port ${lone.port}`)
    const result = await measure('lone', { url: lone.url, client: lone.client, cpu: lone.client }, { REDIS_WAIT_REPLICAS: '0' })
    record('lone', result, null, null, null)
  } catch (error) {
    run.fail(`replication: lone Redis: ${error instanceof Error ? error.message : String(error)}`)
  } finally {
    await lone?.stop()
  }

  let pair: ReplicatedRedis | null = null
  try {
    pair = await ReplicatedRedis.start()
    const { primary, replica } = pair
    report.servers.primary = { port: primary.port, pid: primary.pid }
    report.servers.replica = { port: replica.port, pid: replica.pid }
    run.say(`\n  primary pid ${primary.pid}, port ${primary.port}; replica pid ${replica.pid}, port ${replica.port} (--replicaof 127.0.0.1 ${primary.port}): master_link_status:up`)
    const target: RedisTarget = { url: primary.url, client: primary.client, cpu: [primary.client, replica.client] }

    for (const id of ['a', 'b', 'c'] as const) {
      // Each variant starts with the replica caught up (the previous one's cleanup DELs replicate too).
      await pair.caughtUp()
      let before = await pair.state()
      if (!before.linkUp || before.connectedReplicas !== 1) throw new Error(`before ${VARIANTS[id].label}: the replica is not attached (${describeState(before)})`)
      const lagBefore = id === 'b' ? await primary.configGet('min-replicas-max-lag') : null
      try {
        if (id === 'b') {
          await primary.configSet('min-replicas-max-lag', '10')
          await primary.configSet('min-replicas-to-write', '1')
          await until('the primary to count its replica as good (min_slaves_good_slaves:1)', async () => (await pair?.state())?.goodReplicas === 1, 5000)
          before = await pair.state()
          run.say(`\n  primary: CONFIG SET min-replicas-to-write 1, min-replicas-max-lag 10 (${describeState(before)})`)
        }
        let replicaRecords: ReplicationVariant['replicaRecords'] = null
        // (c): every 2xx waited for the replica's confirmation, so the replica holds its record already.
        const afterRun = id !== 'c'
          ? undefined
          : async ({ prefix, answered2xx, sent }: { prefix: string, answered2xx: number, sent: number }): Promise<void> => {
            const found = await countKeys(replica.client, `${escapeGlob(prefix)}{*}:j:*`)
            const ok = found >= answered2xx && found <= sent
            replicaRecords = { found, answered2xx, sent, ok }
            if (!ok) run.fail(`${VARIANTS.c.label}: the replica held ${found} rotated-token records right after the run, expected between ${answered2xx} (2xx answered, each confirmed by WAIT) and ${sent}`)
            else run.say(`  replica: ${fmtInt(found)} rotated-token records right after the run, for ${fmtInt(answered2xx)} 2xx: every answered rotation had reached the replica`)
          }
        const result = await measure(id, target, { REDIS_WAIT_REPLICAS: id === 'c' ? '1' : '0' }, afterRun)
        const after = await pair.state()
        if (!after.linkUp || after.connectedReplicas !== 1) run.fail(`${VARIANTS[id].label}: the replica detached during the run (${describeState(after)}): not a measurement of replication`)
        record(id, result, before, after, replicaRecords)
      } finally {
        if (id === 'b') {
          await primary.configSet('min-replicas-to-write', '0')
          if (lagBefore !== null) await primary.configSet('min-replicas-max-lag', lagBefore)
          run.say('  primary: CONFIG SET min-replicas-to-write 0 (unset)')
        }
      }
    }
  } catch (error) {
    run.fail(`replication: ${error instanceof Error ? error.message : String(error)}`)
  } finally {
    await pair?.stop()
  }

  // What each guard costs, against (a); and what the replica itself costs, against the lone Redis.
  const get = (id: VariantId): ReplicationVariant | undefined => report.variants.find((v) => v.id === id)
  const minus = (x: number | null, y: number | null): number | null => x === null || y === null ? null : x - y
  const compare = (v: ReplicationVariant | undefined, base: ReplicationVariant | undefined): Comparison | null =>
    v?.rps == null || v.latency === null || base?.rps == null || base.latency === null
      ? null
      : {
          rpsRatio: v.rps / base.rps,
          p50DeltaMs: v.latency.p50 - base.latency.p50,
          p99DeltaMs: v.latency.p99 - base.latency.p99,
          p999DeltaMs: v.latency.p999 - base.latency.p999,
          serverCpuUsDelta: minus(v.serverCpuUsPerRequest, base.serverCpuUsPerRequest),
          redisCpuUsDelta: minus(v.redisCpuUsPerRequest, base.redisCpuUsPerRequest)
        }
  const us = (delta: number | null): string => delta === null ? '?' : `${delta < 0 ? '−' : '+'}${Math.abs(delta).toFixed(0)} µs`
  const a = get('a')
  const line = (name: string, c: Comparison | null, ...involved: Array<ReplicationVariant | undefined>): string => {
    if (c === null) return `  ${name}: not measured`
    const invalid = involved.some((v) => v === undefined || v.non2xx !== 0 || results.find((r) => r.name === v.scenario)?.measured?.exhausted !== false)
    return `  ${name}: req/s ×${c.rpsRatio.toFixed(3)} (${c.rpsRatio >= 1 ? '+' : '−'}${Math.abs((c.rpsRatio - 1) * 100).toFixed(1)} %), p50 ${signedMs(c.p50DeltaMs)}, p99 ${signedMs(c.p99DeltaMs)}, p99.9 ${signedMs(c.p999DeltaMs)}; ` +
      `CPU per request: server ${us(c.serverCpuUsDelta)}, Redis ${us(c.redisCpuUsDelta)}` +
      (invalid ? '  !! NOT VALID (non-2xx or a short run, see the failures)' : '')
  }
  for (const id of ['b', 'c'] as const) {
    const v = get(id)
    if (v !== undefined) v.againstAsync = compare(v, a)
  }
  const timeout = run.options.serverEnv['REDIS_WAIT_TIMEOUT_MS'] ?? '100'
  report.summary = [
    'replication, refresh (EdDSA): the extra cost of each guard against asynchronous-replication loss, relative to (a) asynchronous replication',
    line('(b) primary with min-replicas-to-write 1, min-replicas-max-lag 10', get('b')?.againstAsync ?? null, a, get('b')),
    line(`(c) Rotor with REDIS_WAIT_REPLICAS=1 (WAIT 1 ${timeout} after every denylist write)`, get('c')?.againstAsync ?? null, a, get('c')),
    line('and (a) itself against the lone Redis (what the replica costs)', compare(a, get('lone')), a, get('lone')),
    `  CPU per refresh, server / Redis (µs; steadier than req/s when other work starves the server): ${(['lone', 'a', 'b', 'c'] as const).map((id) => {
      const v = get(id)
      const f = (n: number | null | undefined): string => n == null ? '?' : n.toFixed(0)
      return `${id === 'lone' ? 'lone' : `(${id})`} ${f(v?.serverCpuUsPerRequest)} / ${f(v?.redisCpuUsPerRequest)}`
    }).join(', ')}`
  ]
  return report
}

// ---------------------------------------------------------------- main

interface Machine { cpus: number, cpuModel: string, memoryBytes: number, node: string, platform: string, redis: string, loadAverageAtStart: number[] }

/** Everything the options ask for, in order, then the tables and the results file: the exit code. */
async function benchmark (run: RunContext): Promise<number> {
  const startedAt = new Date()
  // --replication alone (hello and its own redis-servers) never touches the shared Redis.
  const needsShared = run.options.soak !== null || run.options.denylistSizes.length > 0 || run.options.scenarios.some((name) => name !== 'hello')
  if (needsShared) {
    try {
      run.redis = await connectRedis(run.options.redisUrl)
    } catch (error) {
      process.stderr.write(`bench: cannot reach Redis at ${run.options.redisUrl} (${error instanceof Error ? error.message : String(error)}); set TEST_REDIS_URL\n`)
      return 1
    }
  }
  const shared = run.redis
  const machine: Machine = {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memoryBytes: totalmem(),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    redis: shared === null ? 'not used' : await redisVersion(shared),
    loadAverageAtStart: loadavg()
  }
  run.say(`Rotor bench ${startedAt.toISOString()}: ${machine.cpus} × ${machine.cpuModel}, Node ${machine.node}, ${shared === null ? 'shared Redis not used' : `Redis ${machine.redis} at ${run.options.redisUrl}`}`)
  run.say(`server in a child process, autocannon here, ${run.options.connections} connections, ${run.options.warmup} s warm-up + ${run.options.duration} s per scenario; keys under ${run.prefix}* (deleted afterwards)`)

  const results: ScenarioResult[] = []
  const denylist: Array<{ entries: number, fill: FillResult | null, rps: number | null, ratioToRefresh: number | null }> = []
  let soak: SoakReport | null = null
  let replication: ReplicationReport | null = null
  let ceilingRps: number | null = null

  if (run.options.soak !== null) {
    soak = await runSoak(run, run.options.soak, results)
  } else {
    const names: ScenarioName[] = ['hello', ...run.options.scenarios.filter((name) => name !== 'hello')]
    if (run.options.denylistSizes.length > 0 && !names.includes('refresh')) names.push('refresh')
    for (const name of names) {
      const { result } = await runScenario(run, scenario(name), { ceilingRps })
      results.push(result)
      if (name === 'hello' && result.measured !== null) ceilingRps = result.measured.rps
    }
    const baseline = results.find((r) => r.name === 'refresh')?.measured?.rps ?? null
    for (const entries of run.options.denylistSizes) {
      if (shared === null) throw new Error('no connection to the shared Redis')
      const before = await usedMemory(shared)
      const { result } = await runScenario(run, scenario('refresh', { label: `refresh (EdDSA), ${shortCount(entries)} in denylist` }), { ceilingRps, fillEntries: entries })
      results.push(result)
      const after = await usedMemory(shared)
      const rps = result.measured?.rps ?? null
      denylist.push({ entries, fill: result.fill, rps, ratioToRefresh: rps === null || baseline === null ? null : rps / baseline })
      run.say(`  Redis used_memory before fill ${fmtMiB(before)}, after cleanup ${fmtMiB(after)}`)
    }
    if (run.options.replication) replication = await runReplication(run, results, ceilingRps)
  }

  // ------------------------------------------------------------ report
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
  run.say('')
  run.say(table(['scenario', 'req/s', 'p50 ms', 'p99 ms', 'p99.9 ms', 'non-2xx', 'errors', '× ceiling', 'CPU server', 'bench', 'redis', 'others'], rows))
  run.say('(CPU in cores over the measured seconds; "others": every other process on the machine)')
  if (denylist.length > 0) {
    run.say('')
    run.say(table(['denylist records', 'bytes/record (used_memory)', 'bytes/record (MEMORY USAGE)', 'refresh req/s', '× empty denylist'],
      denylist.map((d) => [shortCount(d.entries), d.fill === null ? '' : d.fill.bytesPerEntryUsedMemory.toFixed(1), d.fill === null ? '' : d.fill.bytesPerEntryMemoryUsage.toFixed(1),
        d.rps === null ? 'FAILED' : fmtInt(d.rps), d.ratioToRefresh === null ? '' : d.ratioToRefresh.toFixed(3)])))
  }
  if (replication !== null) {
    run.say('')
    for (const text of replication.summary) run.say(text)
    run.say('  (one run each, in this order, on a machine shared with anything else running: compare within a run, and repeat before trusting a few %)')
  }

  const finishedAt = new Date()
  const file = writeResults(startedAt, {
    startedAt: startedAt.toISOString(),
    finishedAt: finishedAt.toISOString(),
    ok: run.failures.length === 0,
    failures: run.failures,
    warnings: run.warnings,
    machine,
    options: { ...run.options, redisUrl: run.options.redisUrl.replace(/\/\/[^@/]*@/, '//***@') },
    notes: [
      'latencies in ms from every response (exact percentiles); autocannonLatency is autocannon\'s own histogram (whole ms)',
      'rps = completed responses / measured seconds; warm-up excluded',
      'server under test in a child process, load generator in this process, Redis on the same machine: all share the cores'
    ],
    ceilingRps,
    scenarios: results,
    denylist,
    soak,
    replication
  })
  if (run.warnings.length > 0) run.say(`\nwarning: ${run.warnings.length} measurement${run.warnings.length === 1 ? ' was' : 's were'} disturbed by other processes (see the "others" column); run again on a quiet machine`)
  run.say(`\nresults: ${file}`)
  if (run.failures.length > 0) {
    process.stdout.write(loudFailures(run.failures))
    // Seen even when stdout goes to a file.
    if (!(process.stdout.isTTY && process.stderr.isTTY)) process.stderr.write(loudFailures(run.failures))
    return 1
  }
  return 0
}

function shortCount (n: number): string {
  return n >= 1e6 && n % 1e5 === 0 ? `${n / 1e6}M` : n >= 1e3 && n % 100 === 0 ? `${n / 1e3}k` : String(n)
}

// ---------------------------------------------------------------- every exit path

async function cleanUp (run: RunContext): Promise<void> {
  killAllServers()
  killAllRedisServers()
  removeKeysFiles()
  if (run.redis !== null) {
    const client = run.redis
    // Taken once: an abort's cleanup and main's own may both be under way.
    run.redis = null
    try {
      const deleted = await Promise.race([
        deletePrefix(client, run.prefix),
        new Promise<number>((_resolve, reject) => setTimeout(() => { reject(new Error('timed out')) }, 60_000).unref())
      ])
      if (deleted > 0) run.say(`cleanup: deleted ${fmtInt(deleted)} leftover keys under ${run.prefix}`)
    } catch (error) {
      process.stderr.write(`bench: could not delete keys under ${run.prefix}: ${error instanceof Error ? error.message : String(error)}; delete them with SCAN MATCH '${run.prefix}*' + DEL\n`)
    } finally {
      client.disconnect()
    }
  }
}

/**
 * Parses the command line, creates the run's context, and sees that every exit path (the end, an
 * error, a signal) stops the children and deletes the run's keys.
 */
async function main (argv: string[]): Promise<number> {
  let options: Options
  try {
    options = parseOptions(argv)
  } catch (error) {
    process.stderr.write(`bench: ${error instanceof Error ? error.message : String(error)}\n${USAGE}\n`)
    return 2
  }
  const run = new RunContext(options)
  let exiting = false
  const abort = async (why: string, code: number): Promise<void> => {
    if (exiting) process.exit(code)
    exiting = true
    process.stderr.write(`\nbench: ${why}; stopping the server and cleaning Redis …\n`)
    stopCurrentLoad()
    await cleanUp(run)
    process.exit(code)
  }
  process.on('SIGINT', () => { void abort('interrupted', 130) })
  process.on('SIGTERM', () => { void abort('terminated', 143) })
  process.on('SIGHUP', () => { void abort('hung up', 129) })
  process.on('uncaughtException', (error) => { process.stderr.write(`${error.stack ?? String(error)}\n`); void abort('uncaught exception', 1) })
  process.on('unhandledRejection', (error) => { process.stderr.write(`${error instanceof Error ? error.stack ?? error.message : String(error)}\n`); void abort('unhandled rejection', 1) })
  try {
    return await benchmark(run)
  } catch (error) {
    process.stderr.write(`bench: ${error instanceof Error ? error.stack ?? error.message : String(error)}\n`)
    return 1
  } finally {
    await cleanUp(run)
  }
}

// Only what can be done synchronously (an exit listener cannot wait): the children and the key file.
process.on('exit', () => { killAllServers(); killAllRedisServers(); removeKeysFiles() })
process.exit(await main(process.argv.slice(2)))
