import type { RunContext } from './context.js'
import type { LatencySummary } from './load.js'
import { countKeys, escapeGlob } from './redis.js'
import { until } from '../test/support/wait.js'
import { BenchRedis, ReplicatedRedis, type ReplicationState } from './replication.js'
import { fmtInt, fmtMs } from './report.js'
import { runScenario, scenario, type RedisTarget, type RunScenarioOptions, type ScenarioResult } from './scenarios.js'

/**
 * --replication: what each guard against asynchronous-replication loss costs refresh, measured
 * against the bench's own redis-servers (bench/replication.ts starts and stops them).
 */

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

export interface ReplicationReport {
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
export async function runReplication (run: RunContext, results: ScenarioResult[], ceilingRps: number | null): Promise<ReplicationReport> {
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
