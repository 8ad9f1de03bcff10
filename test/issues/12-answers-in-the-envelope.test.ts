import { test } from 'tap'
import { connect, type Socket } from 'node:net'
import { API_KEY, build, listen, testConfig } from '../support/app.js'
import { buildApp } from '../../src/app.js'

// Issue 12: answers outside the envelope. The router's own refusals (an over-long path parameter,
// a URL with broken percent-encoding) and the requests that arrive while Rotor drains got
// Fastify's bodies, with no `code` (and, while draining, no Retry-After).

test('an over-long path parameter is 400 invalid_request in the envelope, not 414 FST_ERR_MAX_PARAM_LENGTH', async (t) => {
  const app = await build(t)
  const response = await app.inject({ method: 'POST', url: `/v1/subjects/${'a'.repeat(1025)}/revoke`, headers: { authorization: `Bearer ${API_KEY}` } })
  t.equal(response.statusCode, 400)
  t.same(response.json(), { statusCode: 400, code: 'invalid_request', error: 'Bad Request', message: 'a path parameter is longer than 1024 characters' })
  const atTheLimit = await app.inject({ method: 'POST', url: `/v1/subjects/${'a'.repeat(1024)}/revoke`, headers: { authorization: `Bearer ${API_KEY}` } })
  t.match(atTheLimit.json(), { code: 'invalid_request', message: 'params/sub must not have more than 255 characters' }, '1024 reach the route, whose schema refuses them in the envelope too')
})

test('a URL with broken percent-encoding is 400 invalid_request in the envelope', async (t) => {
  const app = await build(t)
  for (const url of ['/v1/subjects/%E0%A4%A/revoke', '/v1/%ff']) {
    const response = await app.inject({ method: 'POST', url, headers: { authorization: `Bearer ${API_KEY}` } })
    t.same(response.json(), { statusCode: 400, code: 'invalid_request', error: 'Bad Request', message: 'the URL is not valid (malformed percent-encoding)' }, url)
  }
})

/** Reads from a raw socket until `count` HTTP responses have arrived (or the socket ends). */
async function responses (socket: Socket, count: number): Promise<string[]> {
  let text = ''
  return await new Promise((resolve) => {
    const done = (): void => { resolve(text.split(/(?=HTTP\/1\.1 )/).filter((part) => part !== '')) }
    socket.on('data', (chunk: Buffer) => {
      text += chunk.toString()
      if ((text.match(/HTTP\/1\.1 /g) ?? []).length >= count && /\r\n\r\n[\s\S]*\}$/.test(text)) done()
    })
    socket.on('end', done)
    socket.on('close', done)
  })
}

test('a request that arrives while Rotor drains gets 503 denylist_unavailable with Retry-After; the one in flight completes', async (t) => {
  const app = await buildApp(testConfig())
  const base = new URL(await listen(app))
  const socket = connect(Number(base.port), base.hostname)
  t.teardown(() => { socket.destroy() })
  await new Promise((resolve) => socket.once('connect', resolve))
  const answers = responses(socket, 2)

  // The first request is in flight (its body not all sent) when the shutdown begins...
  const body = JSON.stringify({ sub: 'alice' })
  socket.write(`POST /v1/tokens HTTP/1.1\r\nhost: rotor\r\nauthorization: Bearer ${API_KEY}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body.slice(0, 5)}`)
  await new Promise((resolve) => setTimeout(resolve, 100))
  const closed = app.close()
  await new Promise((resolve) => setTimeout(resolve, 100))
  // ...then its body ends, and a second request follows on the same connection.
  socket.write(`${body.slice(5)}GET /health/live HTTP/1.1\r\nhost: rotor\r\n\r\n`)

  const [first = '', second = ''] = await answers
  await closed
  t.match(first, /^HTTP\/1\.1 200 /, 'the request in flight is served')
  t.match(second, /^HTTP\/1\.1 503 /, 'the one that came after the shutdown began is refused')
  t.match(second, /\r\nretry-after: 2\r\n/i, 'with Retry-After')
  t.same(JSON.parse(second.slice(second.indexOf('\r\n\r\n') + 4)), {
    statusCode: 503, code: 'denylist_unavailable', error: 'Service Unavailable', message: 'Rotor is shutting down; retry after 2 seconds'
  }, 'in the envelope')
})
