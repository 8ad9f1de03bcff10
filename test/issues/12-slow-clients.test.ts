import { test } from 'tap'
import { connect } from 'node:net'
import { buildApp } from '../../src/app.js'
import { listen, testConfig } from '../support/app.js'

// Issue 12: a request trickled a byte at a time (never idle long enough for the idle timeout) was
// held 2-3 times longer than the whole-request limit, because Node checks that limit only every
// 30 s by default. Here the limit is 2 s; it must hold to within the 1 s checking interval.
const LIMIT_MS = 2000
const GIVE_UP_MS = 8000

/** Sends `head` then one more byte every 200 ms until the server answers or hangs up; when that happened (ms). */
async function trickle (port: number, head: string, drip: string): Promise<{ afterMs: number, answer: string }> {
  const socket = connect(port, '127.0.0.1')
  const started = Date.now()
  let answer = ''
  let timer: NodeJS.Timeout | undefined
  const ended = new Promise<void>((resolve) => {
    socket.on('data', (chunk: Buffer) => { answer += chunk.toString() })
    socket.on('close', () => { resolve() })
    socket.on('error', () => {})
  })
  socket.write(head)
  let i = 0
  timer = setInterval(() => { if (!socket.destroyed) socket.write(drip[i++ % drip.length] ?? 'x') }, 200)
  await Promise.race([ended, new Promise((resolve) => setTimeout(resolve, GIVE_UP_MS))])
  clearInterval(timer)
  timer = undefined
  socket.destroy()
  return { afterMs: Date.now() - started, answer }
}

test('a body trickled a byte every 200 ms is cut off at the request limit, not held longer', async (t) => {
  const app = await buildApp(testConfig(), { requestTimeoutMs: LIMIT_MS })
  t.teardown(async () => { await app.close() })
  const { port } = new URL(await listen(app))
  const { afterMs, answer } = await trickle(Number(port), 'POST /v1/tokens/refresh HTTP/1.1\r\nhost: rotor\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n', '{"refresh_token":"')
  t.ok(afterMs < LIMIT_MS + 1000 + 500, `closed after ${afterMs} ms (limit ${LIMIT_MS} ms, checked every second)`)
  t.ok(afterMs >= LIMIT_MS - 100, 'and not before the limit')
  t.match(answer, /^(HTTP\/1\.1 408 |$)/, 'with 408 or nothing')
})

test('headers trickled a byte every 200 ms (slowloris) are cut off at the request limit too', async (t) => {
  const app = await buildApp(testConfig(), { requestTimeoutMs: LIMIT_MS })
  t.teardown(async () => { await app.close() })
  const { port } = new URL(await listen(app))
  const { afterMs } = await trickle(Number(port), 'GET /health/live HTTP/1.1\r\nhost: rotor\r\n', 'x-slow: aaaaaaaa\r\n')
  t.ok(afterMs < LIMIT_MS + 1000 + 500, `closed after ${afterMs} ms`)
})
