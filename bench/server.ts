/**
 * The server under test, run as a child process of bench/run.ts so that the load generator never
 * shares a core's event loop with it.
 *
 *   node dist/bench/server.js hello   a bare Fastify hello-world route (the ceiling)
 *   node dist/bench/server.js rotor   Rotor, built exactly as src/server.ts builds it, from the
 *                                     environment the parent hands over
 *
 * It listens on a free port of the loopback and tells the parent over IPC: {type: 'ready', port}.
 * It answers {type: 'stats', id, gc} with process.memoryUsage() (after a full GC when asked and
 * started with --expose-gc) and process.cpuUsage(), so the bench can watch its heap and CPU
 * without adding a route to the app. It exits when
 * the parent goes away (the IPC channel closes), so it can never outlive the bench.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import { buildApp } from '../src/app.js'
import { loadConfig } from '../src/config.js'

export type ServerKind = 'hello' | 'rotor'

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
  if (kind === 'rotor') return buildApp(loadConfig(process.env))
  throw new Error(`unknown server kind "${kind}" (expected hello or rotor)`)
}

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

process.on('message', (message: ToChild) => {
  if (message.type !== 'stats') return
  const collect = message.gc ? globalThis.gc : undefined
  if (collect !== undefined) collect()
  send({ type: 'stats', id: message.id, stats: { memory: process.memoryUsage(), cpu: process.cpuUsage(), collected: collect !== undefined } })
})

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
