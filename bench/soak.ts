import type { RunContext } from './context.js'
import { runLoad, unhealthy, type IntervalStats, type LoadResult } from './load.js'
import { deletePrefix } from './redis.js'
import { fmtInt, fmtMiB, fmtMs, memoryVerdict, type MemorySample, type MemoryVerdict } from './report.js'
import { checkRotations, describeFailures, runScenario, scenario, type RedisCheck, type ScenarioResult } from './scenarios.js'

interface SoakInterval extends IntervalStats {
  memory: MemorySample | null
  /** Cores the server used over the interval. */
  serverCpu: number | null
}

export interface SoakReport {
  seconds: number
  intervalSeconds: number
  maxRps: number
  targetRps: number
  baseline: MemorySample | null
  intervals: SoakInterval[]
  load: Omit<LoadResult, 'intervals'> | null
  verdict: MemoryVerdict | null
  redisCheck: RedisCheck | null
  cleanup: { keysDeleted: number, seconds: number } | null
}

function sampleOf (at: number, usage: NodeJS.MemoryUsage): MemorySample {
  return { at, rss: usage.rss, heapUsed: usage.heapUsed, heapTotal: usage.heapTotal, external: usage.external }
}

/**
 * Refresh at half the maximum rate just measured, for `seconds`: every interval, the server's
 * memory after a full GC (the child runs with --expose-gc; the GC pause is the server's own, a few
 * ms on a heap this small) and the interval's latency. Growth is judged by memoryVerdict.
 */
export async function runSoak (run: RunContext, seconds: number, results: ScenarioResult[]): Promise<SoakReport> {
  const intervalSeconds = seconds >= 300 ? 60 : 10
  const report: SoakReport = { seconds, intervalSeconds, maxRps: 0, targetRps: 0, baseline: null, intervals: [], load: null, verdict: null, redisCheck: null, cleanup: null }
  const s = scenario('refresh')
  const { result, server, minter, prefix, rotations, sent } = await runScenario(run, s, { ceilingRps: null, keepServer: true, exposeGc: true })
  results.push(result)
  try {
    if (server === null || minter === null || result.measured === null) throw new Error('the maximum refresh rate could not be measured')
    report.maxRps = result.measured.rps
    report.targetRps = Math.max(1, Math.floor(result.measured.rps / 2))
    const first = await server.stats(true)
    report.baseline = sampleOf(0, first.memory)
    let lastCpu = first.cpu
    let lastAt = process.hrtime.bigint()
    run.say(`\n▶ soak: refresh at ${fmtInt(report.targetRps)} req/s (half of the ${fmtInt(report.maxRps)} measured) for ${seconds} s; every ${intervalSeconds} s the server's memory after a full GC`)
    run.say('  (autocannon\'s overallRate releases each second\'s budget at the start of the second: latencies include draining that burst)')
    run.say(`  baseline: rss ${fmtMiB(report.baseline.rss)}, heap used ${fmtMiB(report.baseline.heapUsed)} of ${fmtMiB(report.baseline.heapTotal)}`)
    const header = ['t s', 'req/s', 'p50 ms', 'p99 ms', 'p99.9 ms', 'non-2xx', 'server CPU', 'rss', 'heap used', 'heap total']
    const widths = header.map((h) => Math.max(h.length, 10))
    const line = (cells: string[]): string => cells.map((c, i) => c.padStart(widths[i] ?? 10)).join(' ')
    run.say(`  ${line(header)}`)
    const samples: MemorySample[] = []
    const load = await runLoad({
      url: server.url,
      method: 'POST',
      path: s.path,
      // Minted just in time (an HMAC each, a few µs here): a long soak would need millions up front.
      body: () => `{"refresh_token":"${minter.refreshToken()}"}`,
      duration: seconds,
      connections: run.options.connections,
      overallRate: report.targetRps,
      verify: (body) => body.includes(s.expect),
      interval: {
        seconds: intervalSeconds,
        report: async (stats) => {
          let memory: MemorySample | null = null
          let serverCpu: number | null = null
          try {
            const now = await server.stats(true)
            const at = process.hrtime.bigint()
            memory = sampleOf(stats.at, now.memory)
            serverCpu = ((now.cpu.user + now.cpu.system) - (lastCpu.user + lastCpu.system)) / 1e6 / (Number(at - lastAt) / 1e9)
            lastCpu = now.cpu
            lastAt = at
            samples.push(memory)
          } catch (error) {
            run.fail(`soak: ${error instanceof Error ? error.message : String(error)}`)
          }
          report.intervals.push({ ...stats, memory, serverCpu })
          run.say(`  ${line([stats.at.toFixed(0), fmtInt(stats.rps), fmtMs(stats.latency.p50), fmtMs(stats.latency.p99), fmtMs(stats.latency.p999), String(stats.non2xx),
            serverCpu === null ? '?' : serverCpu.toFixed(2), memory === null ? '?' : fmtMiB(memory.rss), memory === null ? '?' : fmtMiB(memory.heapUsed), memory === null ? '?' : fmtMiB(memory.heapTotal)])}`)
        }
      }
    })
    const { intervals: _intervals, ...rest } = load
    report.load = rest
    if (unhealthy(load)) run.fail(`soak: ${describeFailures(load)}`)
    run.say(`  soak total: ${fmtInt(load.responses)} refreshes in ${load.seconds.toFixed(0)} s, ${fmtInt(load.rps)} req/s, p50 ${fmtMs(load.latency.p50)} ms, p99 ${fmtMs(load.latency.p99)} ms, p99.9 ${fmtMs(load.latency.p999)} ms`)
    report.verdict = memoryVerdict(samples)
    run.say(`  ${report.verdict.text}`)
    if (report.verdict.grew) run.fail(`soak: ${report.verdict.text}`)
    await server.stop()
    report.redisCheck = await checkRotations(run, run.redis, prefix, 0, rotations + (load.statusCodes['200'] ?? 0), sent + load.bodiesUsed)
  } catch (error) {
    run.fail(`soak: ${error instanceof Error ? error.message : String(error)}`)
  } finally {
    if (server !== null) await server.stop()
    if (run.redis !== null) {
      const started = process.hrtime.bigint()
      const keysDeleted = await deletePrefix(run.redis, prefix)
      report.cleanup = { keysDeleted, seconds: Number(process.hrtime.bigint() - started) / 1e9 }
      run.say(`  cleanup: deleted ${fmtInt(keysDeleted)} keys in ${report.cleanup.seconds.toFixed(1)} s (SCAN + DEL)`)
    }
  }
  return report
}
