import { test } from 'tap'
import { spawn } from 'node:child_process'
import { Agent, request } from 'node:http'
import { API_KEY } from '../support/app.js'
import { SERVER } from '../support/paths.js'

test('SIGTERM lets a request in flight finish, then exits 0', async (t) => {
  const child = spawn(process.execPath, [...process.execArgv, SERVER], {
    env: { ...process.env, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', API_KEYS: API_KEY, REDIS_URL: '' }
  })
  // A safety net, not a measure: under a full suite on two cores, starting the server through the
  // TypeScript loader took 3.7 s idle, 9–11 s against four busy loops, and once over 30 s.
  const killer = setTimeout(() => child.kill('SIGKILL'), 90_000)
  t.teardown(() => { clearTimeout(killer); child.kill('SIGKILL') })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => { resolve(code) }))
  let stdout = ''
  const port = await new Promise<number>((resolve) => {
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString()
      const match = /Server listening at http:\/\/127\.0\.0\.1:(\d+)/.exec(stdout)
      if (match !== null) resolve(Number(match[1]))
    })
  })

  // A request whose body is still arriving when the signal comes.
  const body = JSON.stringify({ sub: 'in-flight' })
  const answered = new Promise<{ status: number | undefined, body: string }>((resolve, reject) => {
    // Kept alive, and never closed from this side: only the server can end the connection.
    const agent = new Agent({ keepAlive: true, timeout: 120_000 })
    t.teardown(() => { agent.destroy() })
    const req = request({ agent, host: '127.0.0.1', port, method: 'POST', path: '/v1/tokens', headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
      let text = ''
      res.on('data', (chunk: Buffer) => { text += chunk.toString() })
      res.on('end', () => { resolve({ status: res.statusCode, body: text }) })
    })
    req.on('error', reject)
    req.write(body.slice(0, 5))
    setTimeout(() => {
      child.kill('SIGTERM')
      setTimeout(() => { req.end(body.slice(5)) }, 300)
    }, 100)
  })
  const response = await answered
  t.equal(response.status, 200, 'the request in flight was answered')
  t.match(JSON.parse(response.body), { token_type: 'Bearer' })
  const answeredAt = Date.now()
  t.equal(await exited, 0, 'then the process exited 0')
  // Not held up by the kept-alive connection until the 10 s grace runs out: once the answer is written.
  t.ok(Date.now() - answeredAt < 8000, `and it exited once the answer was written (${Date.now() - answeredAt} ms later)`)
  t.match(stdout, /"signal":"SIGTERM".*shutting down/)

  const refused = await fetch(`http://127.0.0.1:${port}/health/live`).then(() => 'answered', () => 'refused')
  t.equal(refused, 'refused', 'and nothing listens any more')
})
