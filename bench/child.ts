import { fork, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import type { FromChild, ServerKind, ServerStats, ToChild } from './server.js'

const SERVER_SCRIPT = fileURLToPath(new URL('./server.js', import.meta.url))
const START_TIMEOUT_MS = 20_000

/**
 * Every child still running: killed on any exit path of the bench (see killAllServers). Process-wide,
 * not the run context's: process.on('exit') must reach it, synchronously.
 */
const live = new Set<ChildProcess>()

/** SIGKILLs every server child still alive. Synchronous, so it is safe in process.on('exit'). */
export function killAllServers (): void {
  for (const child of live) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
  live.clear()
}

/** The server under test in its own process (one Node event loop, as in production). */
export class ServerProcess {
  readonly kind: ServerKind
  readonly url: string
  readonly pid: number
  private readonly child: ChildProcess
  private nextId = 1
  private readonly pending = new Map<number, (stats: ServerStats) => void>()

  private constructor (kind: ServerKind, child: ChildProcess, port: number) {
    this.kind = kind
    this.child = child
    this.url = `http://127.0.0.1:${port}`
    this.pid = child.pid ?? -1
    child.on('message', (message: FromChild) => {
      if (message.type !== 'stats') return
      const resolve = this.pending.get(message.id)
      this.pending.delete(message.id)
      resolve?.(message.stats)
    })
  }

  /**
   * Forks bench/server.js with exactly `env` (plus PATH/HOME), so no Rotor setting of the shell
   * that runs the bench leaks in. `exposeGc`: memory samples are taken after a full GC. `cpus`: the
   * child pins itself (and the workers it forks) to that CPU list first.
   */
  static async start (kind: ServerKind, env: Record<string, string>, options: { exposeGc?: boolean, profileDir?: string, profileName?: string, cpus?: string | null } = {}): Promise<ServerProcess> {
    const childEnv: Record<string, string> = { ...env }
    for (const name of ['PATH', 'HOME', 'TMPDIR']) {
      const value = process.env[name]
      if (value !== undefined) childEnv[name] = value
    }
    const child = fork(SERVER_SCRIPT, [kind, ...(options.cpus === undefined || options.cpus === null ? [] : [options.cpus])], {
      env: childEnv,
      execArgv: [
        ...(options.exposeGc === true ? ['--expose-gc'] : []),
        // Written when the child exits after SIGTERM (stop()); a SIGKILLed child writes none.
        ...(options.profileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${options.profileDir}`, `--cpu-prof-name=${options.profileName ?? kind}-${Date.now()}.cpuprofile`])
      ],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc']
    })
    live.add(child)
    child.once('exit', () => { live.delete(child) })
    try {
      const port = await new Promise<number>((resolve, reject) => {
        const timer = setTimeout(() => { reject(new Error(`the ${kind} server did not start within ${START_TIMEOUT_MS / 1000} s`)) }, START_TIMEOUT_MS)
        child.on('message', (message: FromChild) => {
          if (message.type === 'ready') { clearTimeout(timer); resolve(message.port) }
          if (message.type === 'failed') { clearTimeout(timer); reject(new Error(`the ${kind} server failed to start: ${message.message}`)) }
        })
        child.once('exit', (code, signal) => {
          clearTimeout(timer)
          reject(new Error(`the ${kind} server exited during start (code ${String(code)}, signal ${String(signal)})`))
        })
        child.once('error', (error) => { clearTimeout(timer); reject(error) })
      })
      return new ServerProcess(kind, child, port)
    } catch (error) {
      if (child.exitCode === null) child.kill('SIGKILL')
      throw error
    }
  }

  get alive (): boolean {
    return this.child.exitCode === null && this.child.signalCode === null
  }

  /** The child's memory and CPU use; `gc`: after a full GC (if it runs with --expose-gc). */
  async stats (gc = false, timeoutMs = 5000): Promise<ServerStats> {
    const id = this.nextId++
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new Error('the server did not report its memory and CPU in time'))
      }, timeoutMs)
      this.pending.set(id, (stats) => { clearTimeout(timer); resolve(stats) })
      const message: ToChild = { type: 'stats', id, gc }
      this.child.send(message)
    })
  }

  /** SIGTERM (Fastify closes, Redis disconnects), SIGKILL if it is not gone within 3 s. */
  async stop (): Promise<void> {
    if (!this.alive) return
    const exited = new Promise((resolve) => this.child.once('exit', resolve))
    this.child.kill('SIGTERM')
    const timer = setTimeout(() => { if (this.alive) this.child.kill('SIGKILL') }, 3000)
    await exited
    clearTimeout(timer)
  }
}
