/**
 * Rotor's load-test harness: `npm run bench` (builds, then runs dist/bench/run.js).
 *
 *   --duration N          seconds measured per scenario (default 10)
 *   --warmup N            seconds of unmeasured warm-up per scenario (default 2)
 *   --connections N       concurrent connections (default 32)
 *   --reps N              run the scenarios N times, in rounds (each once, then each again, …); the
 *                         naive and floor tables give medians (default 1; the ceiling runs once)
 *   --scenarios a,b       any of: hello, issue, refresh, refresh-hs256, refresh-dpop, naive, naive-one-key, naive-hs256, introspect, introspect-hot, jwks (default all;
 *                         hello, the ceiling, always runs first so every ratio is of this run)
 *   --denylist-sizes N,M  fill Redis with N (then M) live rotated-token records before measuring
 *                         refresh; prints bytes per record. Accepts 10k, 1m.
 *   --session-memory N,M  bytes per session of the session index in Redis, for subjects holding N (then M)
 *                         sessions each (20,000 sessions per measurement; nothing timed)
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
 *   --server-cpus LIST    pin the server child (and its workers) to these CPUs (taskset's list: 1, 0-3)
 *   --loadgen-cpus LIST   pin this process (autocannon, the floor) to these CPUs
 *   --redis-cpus LIST     run a redis-server of the bench's own (free port, stopped by PID at the end)
 *                         pinned to these CPUs, instead of the shared Redis; with all three lists and
 *                         --server-cpus disjoint from the others, the server has its cores to itself
 *                         (unpinned, the shared Redis runs wherever the kernel puts it, the server's
 *                         core included)
 *   --against DIR         only: this checkout's refresh against another checkout's (built: DIR/dist),
 *                         or against the naive reference with `--against naive` (`naive-one-key`: the one-key one); `--there-env K=V`
 *                         sets K for the other server only (`--against . --there-env LOG_LEVEL=warn`);
 *                         `--there-denylist N` (with --redis-cpus) gives the other server a redis-server
 *                         of its own holding N denylist records (`--against . --there-denylist 5m`),
 *                         in alternating 1.5 s slices of full load; server CPU per refresh, slice by
 *                         slice (--scenarios refresh,refresh-hs256 chooses the algorithms; default both)
 *
 * The server under test runs in a child process (bench/server.ts); autocannon runs here. Redis:
 * TEST_REDIS_URL or redis://127.0.0.1:6379, under a prefix of this run only, deleted afterwards
 * with SCAN + DEL (never FLUSH). --replication's redis-servers are the bench's own, stopped by PID
 * on every exit path. Results: a table on stdout and bench/results/<timestamp>.json.
 * Any error, timeout, non-2xx or unexpected body fails the run loudly and exits 1.
 */
import { killAllServers } from './child.js'
import { RunContext } from './context.js'
import { stopCurrentLoad } from './load.js'
import { parseOptions, USAGE, type Options, type ScenarioName } from './options.js'
import { connectRedis, deletePrefix, usedMemory } from './redis.js'
import { BenchRedis, killAllRedisServers } from './replication.js'
import { runReplication, type ReplicationReport } from './replication-cost.js'
import { fmtInt, fmtMiB, loudFailures, shortCount } from './report.js'
import { denylistTable, describeMachine, naiveRows, naiveTable, resultsTable, writeResults, type DenylistRow } from './results.js'
import { minterFor, runScenario, scenario, type ScenarioResult } from './scenarios.js'
import { floorTable, measureFloors, type Floor } from './floor.js'
import { measureSessionMemory, sessionMemoryTable, type SessionMemoryRow } from './session-memory.js'
import { runSoak, type SoakReport } from './soak.js'
import { removeKeysFiles } from './tokens.js'
import { pinToCpus } from './pinning.js'
import { againstTable, runAgainst, type AgainstRow } from './against.js'

/** Everything the options ask for, in order, then the tables and the results file: the exit code. */
async function benchmark (run: RunContext): Promise<number> {
  const startedAt = new Date()
  // --replication alone (hello and its own redis-servers) never touches the shared Redis.
  const needsShared = run.options.soak !== null || run.options.denylistSizes.length > 0 || run.options.sessionMemory.length > 0 || run.options.scenarios.some((name) => name !== 'hello')
  if (needsShared) {
    try {
      run.redis = await connectRedis(run.options.redisUrl)
    } catch (error) {
      process.stderr.write(`bench: cannot reach Redis at ${run.options.redisUrl} (${error instanceof Error ? error.message : String(error)}); set TEST_REDIS_URL\n`)
      return 1
    }
  }
  const shared = run.redis
  const machine = await describeMachine(shared)
  run.say(`Rotor bench ${startedAt.toISOString()}: ${machine.cpus} × ${machine.cpuModel}, Node ${machine.node}, ${shared === null ? 'shared Redis not used' : `Redis ${machine.redis} at ${run.options.redisUrl}`}`)
  const pinned = (cpus: string | null): string => cpus === null ? '' : ` (CPUs ${cpus})`
  run.say(`server in a child process${pinned(run.options.serverCpus)}, autocannon here${pinned(run.options.loadgenCpus)}${run.options.redisCpus === null ? '' : `, Redis of the bench's own${pinned(run.options.redisCpus)}`}, ${run.options.connections} connections, ${run.options.warmup} s warm-up + ${run.options.duration} s per scenario; keys under ${run.prefix}* (deleted afterwards)`)

  const results: ScenarioResult[] = []
  const denylist: DenylistRow[] = []
  let soak: SoakReport | null = null
  let replication: ReplicationReport | null = null
  let sessionMemory: SessionMemoryRow[] = []
  let ceilingRps: number | null = null
  let against: AgainstRow[] = []

  if (run.options.against !== null) {
    const algorithms = run.options.scenariosGiven
      ? run.options.scenarios.map((name) => name === 'refresh' ? 'EdDSA' as const : 'HS256' as const)
      : ['EdDSA' as const, 'HS256' as const]
    try {
      against = await runAgainst(run, run.options.against, algorithms)
    } catch (error) {
      run.fail(error instanceof Error ? error.message : String(error))
    }
  } else if (run.options.soak !== null) {
    soak = await runSoak(run, run.options.soak, results)
  } else {
    const names: ScenarioName[] = run.options.scenarios.filter((name) => name !== 'hello')
    if (run.options.denylistSizes.length > 0 && !names.includes('refresh')) names.push('refresh')
    const { result: hello } = await runScenario(run, scenario('hello'), { ceilingRps })
    results.push(hello)
    if (hello.measured !== null) ceilingRps = hello.measured.rps
    for (let rep = 1; rep <= run.options.reps; rep++) {
      for (const name of names) {
        const label = run.options.reps === 1 ? {} : { label: `${scenario(name).label} #${rep}` }
        const { result } = await runScenario(run, scenario(name, label), { ceilingRps })
        results.push(result)
      }
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
    if (run.options.sessionMemory.length > 0) sessionMemory = await measureSessionMemory(run, run.options.sessionMemory)
  }

  if (results.length > 0) {
    run.say('')
    run.say(resultsTable(results))
    run.say('(CPU in cores over the measured seconds; "others": every other process on the machine)')
  }
  if (against.length > 0) {
    run.say('')
    run.say(againstTable(against))
  }
  const naive = naiveRows(results)
  if (naive.length > 0) {
    run.say('')
    run.say(naiveTable(naive))
  }
  const floors: Floor[] = run.options.soak === null && shared !== null ? await measureFloors(results, (algorithm) => minterFor(run, algorithm), run.options.redisUrl) : []
  if (floors.length > 0) {
    run.say('')
    run.say(floorTable(floors))
    run.say('(the floor: one access-token signature, the refresh tokens\' two HMACs, one Redis script round trip\'s client CPU, measured here; one hello-world request\'s server CPU, from the ceiling)')
  }
  if (denylist.length > 0) {
    run.say('')
    run.say(denylistTable(denylist))
  }
  if (sessionMemory.length > 0) {
    run.say('')
    run.say(sessionMemoryTable(sessionMemory))
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
    againstNaive: naive,
    against,
    floors,
    denylist,
    soak,
    replication,
    sessionMemory
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

// ---------------------------------------------------------------- every exit path

async function cleanUp (run: RunContext): Promise<void> {
  killAllServers()
  killAllRedisServers()
  removeKeysFiles()
  if (run.options.redisCpus !== null) {
    // The bench's own Redis, gone with its keys.
    run.redis?.disconnect()
    run.redis = null
  } else if (run.redis !== null) {
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
  try {
    if (options.loadgenCpus !== null) pinToCpus(process.pid, options.loadgenCpus)
    if (options.redisCpus !== null) {
      // The run's keys die with it: no prefix to delete afterwards (the exit paths kill it by PID).
      const own = await BenchRedis.start()
      pinToCpus(own.pid, options.redisCpus)
      options = { ...options, redisUrl: own.url }
    }
  } catch (error) {
    process.stderr.write(`bench: ${(error as Error).message}\n`)
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
