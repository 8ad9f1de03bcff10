import cluster, { type Worker } from 'node:cluster'
import closeWithGrace from 'close-with-grace'
import { pino } from 'pino'
import { AggregatorRegistry, type Registry } from 'prom-client'
import type { Config } from './config.js'

/*
 * WORKERS > 1: the primary process serves nothing itself. It forks the workers (each a whole
 * Rotor: same settings, same keys file, same Redis, one shared listening port), restarts one
 * that dies, passes SIGHUP on (key reload), and on SIGTERM or SIGINT stops them gracefully and
 * exits when they have. A worker's /metrics answers for all of them, summed through the primary.
 */

const METRICS = 'rotor:metrics'
interface MetricsMessage { type: typeof METRICS, id: number, text?: string }

function isMetricsMessage (message: unknown): message is MetricsMessage {
  return typeof message === 'object' && message !== null && (message as MetricsMessage).type === METRICS
}

/** A restart waits longer each time workers die young: 0.5 s, doubling up to 30 s. */
const RESTART_MIN_MS = 500
const RESTART_MAX_MS = 30_000
/** A worker that lived this long resets the wait. */
const STABLE_MS = 60_000

export function runPrimary (config: Config): void {
  const log = pino({ level: config.logLevel }).child({ role: 'primary' })
  const aggregator = new AggregatorRegistry()
  let stopping = false
  let listening = 0
  /** How long the next restart of a worker that died young waits. */
  let restartDelayMs = RESTART_MIN_MS

  const restarts = new Set<NodeJS.Timeout>()
  // In the primary, cluster.workers is always there.
  const workers = (): Worker[] => Object.values(cluster.workers!) as Worker[]

  const stopWorkers = async (): Promise<void> => {
    stopping = true
    for (const timer of restarts) clearTimeout(timer)
    await Promise.all(workers().filter((worker) => !worker.isDead()).map(async (worker) => {
      const exited = new Promise((resolve) => worker.once('exit', resolve))
      worker.process.kill('SIGTERM')
      await exited
    }))
  }

  const fork = (): void => {
    const worker = cluster.fork()
    const bornAt = Date.now()
    let started = false
    // A worker listens once per listener (PORT, and MANAGEMENT_PORT when set); it has started when all are up.
    let listeners = config.managementPort === null ? 1 : 2
    worker.on('listening', () => {
      if (--listeners > 0) return
      started = true
      if (++listening === config.workers) log.info({ workers: config.workers, pids: workers().map((w) => w.process.pid) }, 'all workers listening')
    })
    worker.on('exit', (code, signal) => {
      if (stopping) return
      if (!started) {
        // It could not start (a port taken, a Redis refusing production): neither can the next one.
        log.fatal({ worker: worker.process.pid, code, signal }, 'a worker exited before it listened: stopping')
        stopWorkers().then(() => process.exit(1), /* c8 ignore next */ () => process.exit(1))
        return
      }
      listening--
      /* c8 ignore next: the tests do not wait a minute for a worker to count as stable */
      const delayMs = Date.now() - bornAt > STABLE_MS ? RESTART_MIN_MS : restartDelayMs
      restartDelayMs = Math.min(delayMs * 2, RESTART_MAX_MS)
      log.error({ worker: worker.process.pid, code, signal, restartInMs: delayMs }, 'a worker died: starting another')
      const timer = setTimeout(() => {
        restarts.delete(timer)
        fork()
      }, delayMs)
      restarts.add(timer)
    })
  }

  cluster.on('message', (worker: Worker, message: unknown) => {
    if (!isMetricsMessage(message)) return
    aggregator.clusterMetrics().then(
      (text) => { worker.send({ type: METRICS, id: message.id, text }) },
      /* c8 ignore next: a worker that died in the middle of the 5 s collection */
      () => { worker.send({ type: METRICS, id: message.id }) }
    )
  })

  process.on('SIGHUP', () => {
    for (const worker of workers()) worker.process.kill('SIGHUP')
  })

  // Workers ignore SIGINT (a terminal's Ctrl-C reaches the whole process group): the primary
  // decides, and sends each one SIGTERM. Their own grace is 10 s; this waits a little longer.
  closeWithGrace({ delay: 15_000, skip: ['SIGHUP'] }, async ({ signal }) => {
    log.info({ signal }, 'shutting down the workers')
    await stopWorkers()
  })

  for (let i = 0; i < config.workers; i++) fork()
}

/**
 * In a worker: answers the primary's collection with this worker's registry, and gives the
 * /metrics route the sum over all workers (or this worker's alone if the primary does not answer).
 */
export function clusterMetrics (registry: Registry): () => Promise<string> {
  AggregatorRegistry.setRegistries([registry])
  // Constructing one installs prom-client's listener for the primary's collection requests.
  // eslint-disable-next-line no-new
  new AggregatorRegistry()
  const waiting = new Map<number, (text: string | undefined) => void>()
  let next = 0
  process.on('message', (message: unknown) => {
    if (isMetricsMessage(message)) waiting.get(message.id)?.(message.text)
  })
  return async () => {
    const id = next++
    const text = await new Promise<string | undefined>((resolve) => {
      const timer = setTimeout(() => { resolve(undefined) }, 6000)
      waiting.set(id, (answer) => {
        clearTimeout(timer)
        resolve(answer)
      })
      process.send?.({ type: METRICS, id })
    })
    waiting.delete(id)
    /* c8 ignore next: the primary gone or too slow */
    return text ?? await registry.metrics()
  }
}
