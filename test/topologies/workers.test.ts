import { test } from 'tap'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { request } from 'node:http'
import { loadConfig } from '../../src/config.js'
import { ConfigError } from '../../plugins/errors.js'
import { API_KEY, REDIS_URL } from '../support/app.js'
import { deletePrefix } from '../support/redis.js'
import { freePort } from '../support/net.js'
import { until } from '../support/wait.js'
import type { Test } from '../support/tap.js'
import { SERVER } from '../support/paths.js'

interface Answer { status: number, body: string }

/** One request on a connection of its own, so that the primary hands it to the next worker. */
async function send (port: number, method: string, path: string, body?: unknown, apiKey?: string): Promise<Answer> {
  const payload = body === undefined ? undefined : JSON.stringify(body)
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {}
    if (payload !== undefined) headers['content-type'] = 'application/json'
    if (apiKey !== undefined) headers['authorization'] = `Bearer ${apiKey}`
    const req = request({ host: '127.0.0.1', port, method, path, headers, agent: false }, (res) => {
      let text = ''
      res.on('data', (chunk: Buffer) => { text += chunk.toString() })
      res.on('end', () => { resolve({ status: Number(res.statusCode), body: text }) })
    })
    req.on('error', reject)
    req.end(payload)
  })
}

/** The server's log lines (JSON) as they come, from every process: the primary and its workers share stdout. */
function collect (stream: NodeJS.ReadableStream): Array<Record<string, unknown>> {
  const lines: Array<Record<string, unknown>> = []
  let rest = ''
  stream.on('data', (chunk: Buffer) => {
    const text = rest + chunk.toString()
    const parts = text.split('\n')
    rest = parts.pop() ?? ''
    for (const line of parts) if (line.startsWith('{')) lines.push(JSON.parse(line) as Record<string, unknown>)
  })
  return lines
}

function spawnServer (t: Test, env: Record<string, string>): { lines: Array<Record<string, unknown>>, exited: Promise<number | null>, kill: (signal: NodeJS.Signals) => void, stderr: () => string } {
  const child = spawn(process.execPath, [...process.execArgv, SERVER], { env: { ...process.env, LOG_LEVEL: 'info', HOST: '127.0.0.1', ...env } })
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => { resolve(code) }))
  const lines = collect(child.stdout)
  t.teardown(async () => {
    if (child.exitCode === null) {
      child.kill('SIGKILL')
      await exited
    }
    // The workers are the primary's children: none may outlive the test.
    for (const line of lines) if (typeof line['pid'] === 'number' && line['pid'] !== child.pid) { try { process.kill(line['pid'], 'SIGKILL') } catch {} }
  })
  return { lines, exited, kill: (signal) => child.kill(signal), stderr: () => stderr }
}

const withMessage = (lines: Array<Record<string, unknown>>, message: string): Array<Record<string, unknown>> => lines.filter((line) => line['msg'] === message)

test('WORKERS=2: two processes share the port, the keys and Redis; one dying is replaced; SIGHUP and SIGTERM reach the workers', async (t) => {
  const port = await freePort()
  const opsPort = await freePort()
  const prefix = `rotor-test:${randomBytes(6).toString('hex')}:`
  t.teardown(async () => { await deletePrefix(REDIS_URL, prefix) })
  const server = spawnServer(t, {
    WORKERS: '2',
    PORT: String(port),
    API_KEYS: API_KEY,
    REDIS_URL,
    REDIS_KEY_PREFIX: prefix,
    JWT_ALGORITHM: 'HS256',
    JWT_SECRET: randomBytes(32).toString('base64url'),
    RATE_LIMIT_MAX: '100000',
    MANAGEMENT_PORT: String(opsPort)
  })
  // Three processes compile the TypeScript at once: on a busy machine that takes a while.
  await until('both workers to listen', async () => withMessage(server.lines, 'all workers listening').length === 1, 90_000)
  const pids = withMessage(server.lines, 'all workers listening')[0]?.['pids'] as number[]
  t.equal(new Set(pids).size, 2, 'two worker processes')

  // Twenty pairs, each issued and then refreshed on a new connection: whichever worker gets it.
  const pairs = []
  for (let i = 0; i < 20; i++) pairs.push(JSON.parse((await send(port, 'POST', '/v1/tokens', { sub: `user-${i}` }, API_KEY)).body) as { refresh_token: string })
  const refreshed = await Promise.all(pairs.map(async (pair) => (await send(port, 'POST', '/v1/tokens/refresh', { refresh_token: pair.refresh_token })).status))
  t.same(refreshed, pairs.map(() => 200), 'a token issued by one worker refreshes on any')

  // /metrics on either worker's ops listener counts what both did.
  t.equal((await send(port, 'GET', '/metrics')).status, 404, '/metrics is on the ops port only')
  for (let i = 0; i < 2; i++) {
    const metrics = (await send(opsPort, 'GET', '/metrics')).body
    t.match(metrics, /^rotor_tokens_issued_total 20$/m, 'issued: the sum over the workers')
    t.match(metrics, /^rotor_tokens_refreshed_total\{retry="false"\} 20$/m, 'refreshed: the sum over the workers')
  }

  server.kill('SIGHUP')
  await until('each worker to reload its keys', async () => new Set(withMessage(server.lines, 'keys not reloaded: there is no JWT_KEYS_FILE to read again').map((line) => line['pid'])).size === 2)
  t.pass('SIGHUP to the primary reached both workers')

  process.kill(pids[0]!, 'SIGKILL')
  await until('a replacement worker', async () => withMessage(server.lines, 'all workers listening').length === 2, 20_000)
  t.match(withMessage(server.lines, 'a worker died: starting another')[0], { worker: pids[0], signal: 'SIGKILL' })
  const replaced = withMessage(server.lines, 'all workers listening')[1]?.['pids'] as number[]
  t.notOk(replaced.includes(pids[0]!), 'the dead worker is gone from the set')
  t.equal((await send(port, 'GET', '/health/live')).status, 200)
  t.equal((await send(opsPort, 'GET', '/health/live')).status, 200, 'both listeners of the replacement are up')

  // The replacement dies young too: its own replacement waits 1 s, and a SIGTERM in that second cancels it.
  process.kill(replaced.find((pid) => pid !== pids[1])!, 'SIGKILL')
  await until('the second death to be seen', async () => withMessage(server.lines, 'a worker died: starting another').length === 2)
  t.match(withMessage(server.lines, 'a worker died: starting another')[1], { restartInMs: 1000 }, 'the wait doubles while workers die young')
  server.kill('SIGTERM')
  t.equal(await server.exited, 0, 'the primary exits 0 once the workers have')
  t.equal(withMessage(server.lines, 'all workers listening').length, 2, 'and the pending restart never happened')
  t.same(withMessage(server.lines, 'shutting down').map((line) => line['pid']), [pids[1]], 'the live worker shut down gracefully')
  t.equal(await send(port, 'GET', '/health/live').then(() => 'answered', () => 'refused'), 'refused', 'nothing listens any more')
})

test('WORKERS=2: a worker that cannot start stops the whole service with exit 1', async (t) => {
  const server = spawnServer(t, {
    // TEST-NET-1: no such address on this machine, so listen fails.
    WORKERS: '2', HOST: '192.0.2.1', PORT: String(await freePort()), API_KEYS: API_KEY, REDIS_URL, JWT_ALGORITHM: 'HS256', JWT_SECRET: randomBytes(32).toString('base64url')
  })
  t.equal(await server.exited, 1)
  t.equal(withMessage(server.lines, 'a worker exited before it listened: stopping').length, 1)
})

test('WORKERS > 1 refuses what workers could not share: generated keys, generated API keys, the in-process store', async (t) => {
  let error: unknown
  try {
    loadConfig({ WORKERS: '2' })
  } catch (caught) {
    error = caught
  }
  t.ok(error instanceof ConfigError)
  t.match((error as ConfigError).problems, [/WORKERS > 1 needs JWT_KEYS_FILE/, /WORKERS > 1 needs API_KEYS/, /WORKERS > 1 needs REDIS_URL/])
  t.equal(loadConfig({ WORKERS: '4', JWT_ALGORITHM: 'HS256', JWT_SECRET: 'x'.repeat(32), API_KEYS: API_KEY, REDIS_URL: 'redis://127.0.0.1:6379' }).workers, 4)
  t.equal(loadConfig({}).workers, 1, 'one process by default')
})
