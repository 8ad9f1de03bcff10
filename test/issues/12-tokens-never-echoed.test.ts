import { test } from 'tap'
import { API_KEY, build, issue, LogCapture, type Pair } from '../support/app.js'

// Issue 12: a token sent where no redaction path looks (the URL's query or path, a JSON property
// name) reached the "incoming request" log line, the validation message and the 400 answer.

/** Every segment of the token, so that a partial echo is caught too. */
function leaks (text: string, token: string): string[] {
  return token.split('.').filter((segment) => segment.length > 0 && text.includes(segment))
}

test('a token in the URL, in the path or as a property name reaches neither the log nor the answer', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, { LOG_LEVEL: 'info' }, logs)
  const pair: Pair = await issue(app, { sub: 'alice' })
  const token = pair.refresh_token
  const requests = [
    { method: 'POST' as const, url: `/v1/tokens/refresh?refresh_token=${token}`, payload: { refresh_token: 'x' } },
    { method: 'GET' as const, url: `/v1/${token}` },
    { method: 'POST' as const, url: `/v1/subjects/${token}/revoke`, headers: { authorization: `Bearer ${API_KEY}` } },
    { method: 'POST' as const, url: '/v1/tokens/refresh', payload: { [token]: 1 } },
    { method: 'POST' as const, url: '/v1/tokens/introspect', headers: { authorization: `Bearer ${API_KEY}` }, payload: { token, [token]: true } },
    { method: 'POST' as const, url: '/api/auth/token/refresh/', payload: { [token]: 'x' } },
    { method: 'POST' as const, url: '/v1/tokens/refresh', headers: { 'content-type': 'application/json' }, payload: `{"${token}": ` }
  ]
  for (const request of requests) {
    const response = await app.inject(request)
    t.same(leaks(response.body, token), [], `${request.method} ${request.url.slice(0, 40)}…: not in the ${response.statusCode} answer`)
  }
  t.same(leaks(logs.text, token), [], 'nor anywhere in the log')
  const urls = logs.lines.map((line) => (line['req'] as { url?: string } | undefined)?.url).filter((url) => url !== undefined)
  t.ok(urls.includes('/v1/tokens/refresh?refresh_token=[token]'), 'the request line shows where the token was')
  t.ok(urls.includes('/v1/[token]'))
})

test('addresses and ordinary paths are not mistaken for tokens', async (t) => {
  const logs = new LogCapture()
  // A 2xx's request line is at debug.
  const app = await build(t, { LOG_LEVEL: 'debug' }, logs)
  const response = await app.inject({ method: 'GET', url: '/v1/no.such.route' })
  t.equal(response.json<{ message: string }>().message, 'no route GET /v1/no.such.route', 'short segments stay')
  await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })
  t.ok(logs.lines.some((line) => (line['req'] as { url?: string } | undefined)?.url === '/.well-known/jwks.json'), 'the JWKS path is logged as it is')
})
