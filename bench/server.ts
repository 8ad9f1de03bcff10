/**
 * The server under test, run as a child process of bench/run.ts so that the load generator never
 * shares a core's event loop with it.
 *
 *   node dist/bench/server.js hello   a bare Fastify hello-world route (the ceiling)
 *   node dist/bench/server.js rotor   Rotor, built exactly as src/server.ts builds it, from the
 *                                     environment the parent hands over (its log into /dev/null)
 *   node dist/bench/server.js naive   the naive refresh service of bench/naive.ts (the reference)
 *
 * A second argument, a CPU list (`1`, `0-3`), pins it first, with every worker it then forks.
 *
 * It listens on a free port of the loopback and tells the parent over IPC: {type: 'ready', port}.
 * It answers {type: 'stats', id, gc} with process.memoryUsage() (after a full GC when asked and
 * started with --expose-gc) and process.cpuUsage(), so the bench can watch its heap and CPU
 * without adding a route to the app. It exits when
 * the parent goes away (the IPC channel closes), so it can never outlive the bench.
 *
 * With WORKERS > 1 in its environment (rotor only), it is a node:cluster primary, as src/server.ts
 * is: it forks the workers, says ready once all of them listen on the one port, and answers
 * stats with the sum over itself and every worker (CPU; memory summed too, so rss is the total).
 */
import cluster, { type Worker } from 'node:cluster'
import Fastify, { type FastifyInstance } from 'fastify'
import { buildApp } from '../src/app.js'
import { loadConfig } from '../src/config.js'
import { buildNaive } from './naive.js'
import { bufferedDestination } from '../plugins/logging.js'
import { pinToCpus } from './pinning.js'

export type ServerKind = 'hello' | 'rotor' | 'naive'

export type ToChild = { type: 'stats', id: number, gc: boolean }
export interface ServerStats { memory: NodeJS.MemoryUsage, cpu: NodeJS.CpuUsage, collected: boolean }
export type FromChild =
  | { type: 'ready', port: number }
  | { type: 'failed', message: string }
  | { type: 'stats', id: number, stats: ServerStats }

function send (message: FromChild): void {
  if (process.send !== undefined && process.connected) process.send(message)
}

async function build (kind: string): Promise<FastifyInstance> {
  if (kind === 'hello') {
    const app = Fastify({ logger: false })
    app.get('/', async () => ({ hello: 'world' }))
    return app
  }
  // Logged as src/server.ts logs (buffered, off the request's path), into /dev/null: the
  // terminal is the bench's own.
  if (kind === 'rotor') return buildApp(loadConfig(process.env), { logStream: bufferedDestination('/dev/null').stream })
  if (kind === 'naive') return buildNaive(process.env)
  throw new Error(`unknown server kind "${kind}" (expected hello, rotor or naive)`)
}

// This child's own process state: its signal and disconnect handlers close the app, once.
let app: FastifyInstance | null = null
let closing = false

async function shutdown (code: number): Promise<never> {
  if (!closing) {
    closing = true
    const timer = setTimeout(() => process.exit(code), 2000)
    timer.unref()
    try {
      await app?.close()
    } catch {
      // leaving anyway
    }
  }
  process.exit(code)
}

process.on('disconnect', () => { void shutdown(0) })
process.on('SIGTERM', () => { void shutdown(0) })
process.on('SIGINT', () => { void shutdown(0) })

function ownStats (gc: boolean): ServerStats {
  const collect = gc ? globalThis.gc : undefined
  if (collect !== undefined) collect()
  return { memory: process.memoryUsage(), cpu: process.cpuUsage(), collected: collect !== undefined }
}

const cpus = process.argv[3]
if (cpus !== undefined && cluster.isPrimary) pinToCpus(process.pid, cpus)

const workers = Number(process.env['WORKERS'] ?? '1')
if (process.argv[2] === 'rotor' && workers > 1 && cluster.isPrimary) {
  await runPrimary(workers)
} else {
  process.on('message', (message: ToChild) => {
    if (message.type === 'stats') send({ type: 'stats', id: message.id, stats: ownStats(message.gc) })
  })
  await serve()
}

/** The cluster's primary: forks, waits for every worker to listen, sums their stats. */
async function runPrimary (count: number): Promise<void> {
  const forked: Worker[] = []
  let nextId = 1
  const pending = new Map<number, (stats: ServerStats) => void>()
  cluster.on('message', (_worker, message: FromChild) => {
    if (message.type === 'stats') pending.get(message.id)?.(message.stats)
  })
  const statsOf = async (worker: Worker, gc: boolean): Promise<ServerStats> => await new Promise((resolve) => {
    const id = nextId++
    pending.set(id, (stats) => { pending.delete(id); resolve(stats) })
    worker.send({ type: 'stats', id, gc } satisfies ToChild)
  })
  process.on('message', (message: ToChild) => {
    if (message.type !== 'stats') return
    Promise.all(forked.map(async (worker) => statsOf(worker, message.gc))).then((all) => {
      const total = ownStats(message.gc)
      for (const { memory, cpu } of all) {
        for (const key of Object.keys(total.memory) as Array<keyof NodeJS.MemoryUsage>) total.memory[key] += memory[key]
        total.cpu.user += cpu.user
        total.cpu.system += cpu.system
      }
      send({ type: 'stats', id: message.id, stats: total })
    }, () => {})
  })
  cluster.on('exit', (worker, code) => {
    if (!closing) {
      send({ type: 'failed', message: `worker ${worker.process.pid ?? '?'} exited with code ${String(code)}` })
      void shutdown(1)
    }
  })
  const ports = new Set<number>()
  let listening = 0
  await new Promise<void>((resolve) => {
    cluster.on('listening', (_worker, address) => {
      ports.add(address.port)
      if (++listening === count) resolve()
    })
    for (let i = 0; i < count; i++) forked.push(cluster.fork())
  })
  if (ports.size !== 1) {
    send({ type: 'failed', message: `workers listen on ${ports.size} ports, expected one` })
    await shutdown(1)
  }
  send({ type: 'ready', port: [...ports][0] ?? 0 })
}

async function serve (): Promise<void> {
  try {
    app = await build(process.argv[2] ?? '')
    await app.listen({ port: 0, host: '127.0.0.1' })
    const address = app.server.address()
    if (address === null || typeof address === 'string') throw new Error('the server has no TCP address')
    send({ type: 'ready', port: address.port })
  } catch (error) {
    send({ type: 'failed', message: error instanceof Error ? error.message : String(error) })
    await shutdown(1)
  }
}
