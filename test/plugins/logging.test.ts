import { test } from 'tap'
import { API_KEY, build, decodeJwt, issue, LogCapture, refreshWith, type Pair } from '../support/app.js'

test('tokens and API keys never reach a log line, even at trace level', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, { LOG_LEVEL: 'trace', REFRESH_REUSE_GRACE: '0' }, logs)
  const pair = await issue(app, { sub: 'logged', claims: { role: 'x' } })
  const rotated = (await refreshWith(app, pair.refresh_token)).json<Pair>()
  await refreshWith(app, pair.refresh_token)
  await app.inject({ method: 'POST', url: '/v1/tokens/introspect', headers: { authorization: `Bearer ${API_KEY}` }, payload: { token: rotated.access_token } })
  await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: rotated.refresh_token } })
  await app.inject({ method: 'POST', url: '/v1/tokens/refresh', headers: { 'content-type': 'application/json' }, payload: `{"refresh_token": "${rotated.refresh_token}` })
  await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: 'Bearer not-the-right-key-123' }, payload: { sub: 'x' } })
  t.ok(logs.lines.length > 10, 'the log was captured')
  for (const secret of [pair.access_token, pair.refresh_token, rotated.access_token, rotated.refresh_token, API_KEY, 'not-the-right-key-123']) {
    t.notOk(logs.text.includes(secret), 'a secret in the log')
    const signature = secret.split('.')[2]
    if (signature !== undefined) t.notOk(logs.text.includes(signature), 'a token signature in the log')
  }
})

test('one structured line per token event, with sub, sid and jti', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, { REFRESH_REUSE_GRACE: '0' }, logs)
  const pair = await issue(app, { sub: 'evented' })
  const { sid, jti } = decodeJwt(pair.refresh_token).payload
  const rotated = (await refreshWith(app, pair.refresh_token)).json<Pair>()
  await refreshWith(app, pair.refresh_token)
  await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: rotated.refresh_token } })
  await refreshWith(app, 'garbage')
  const events = logs.lines.filter((line) => typeof line['event'] === 'string')
  const byEvent = (name: string): Array<Record<string, unknown>> => events.filter((line) => line['event'] === name)
  t.match(byEvent('token.issued'), [{ sub: 'evented', sid, jti, level: 30 }])
  t.match(byEvent('token.refreshed'), [{ sub: 'evented', sid, previous_jti: jti, jti: decodeJwt(rotated.refresh_token).payload['jti'] }])
  t.match(byEvent('token.reuse'), [{ sub: 'evented', sid, jti, level: 40 }])
  t.match(byEvent('session.revoked'), [{ sub: 'evented', sid }])
  const refused = byEvent('token.refused')
  t.match(refused, [{ code: 'token_reused', sid }, { code: 'token_invalid' }])
  t.ok(refused.every((line) => line['level'] === 30), 'a refused token is info, never error')
  t.ok(events.every((line) => typeof line['reqId'] === 'string'), 'each line carries the request id')
})

test('at info, a refresh is one line (its token event) and an error answer two (why, and the request)', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, { LOG_LEVEL: 'info' }, logs)
  const pair = await issue(app, { sub: 'quiet' })
  const before = logs.lines.length
  t.equal((await refreshWith(app, pair.refresh_token)).statusCode, 200)
  t.match(logs.lines.slice(before), [{ event: 'token.refreshed', sub: 'quiet', level: 30 }], 'the token event alone: no per-request line')
  t.equal(logs.lines.length, before + 1)

  const refused = logs.lines.length
  t.equal((await refreshWith(app, 'garbage')).statusCode, 401)
  const lines = logs.lines.slice(refused)
  t.match(lines, [
    { event: 'token.refused', code: 'token_invalid', level: 30 },
    { msg: 'request completed', level: 30, req: { method: 'POST', url: '/v1/tokens/refresh' }, res: { statusCode: 401 } }
  ])
  t.equal(lines.length, 2)
  t.type(lines[1]?.['responseTime'], 'number')
})

test('at debug, every request has its incoming and completed lines', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, { LOG_LEVEL: 'debug' }, logs)
  t.equal((await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })).statusCode, 200)
  t.match(logs.lines.filter((line) => line['reqId'] !== undefined), [
    { msg: 'incoming request', level: 20, req: { method: 'GET', url: '/.well-known/jwks.json' } },
    { msg: 'request completed', level: 20, res: { statusCode: 200 } }
  ])
})

test('members named like a secret are censored at the top of a line and one level down, nothing else is touched', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, { LOG_LEVEL: 'info' }, logs)
  class Failure extends Error { token = 'e.y.z'; code = 'E_X' }
  app.log.info({ token: 'a.b.c', refresh_token: 'r', kept: 'k', nested: { body: '{"refresh_token":"x"}', apiKey: 'key', depth: 1 }, list: ['token'] }, 'plain')
  app.log.info({ err: new Failure('went wrong') }, 'failed')
  const same = { sub: 'alice', detail: { sid: 's' } }
  app.log.info(same, 'untouched')
  const [plain, failed, untouched] = logs.lines.slice(-3)
  t.match(plain, { token: '[redacted]', refresh_token: '[redacted]', kept: 'k', nested: { body: '[redacted]', apiKey: '[redacted]', depth: 1 }, list: ['token'] })
  t.match(failed, { err: { type: 'Failure', message: 'went wrong', token: '[redacted]', code: 'E_X' } })
  t.match((failed?.['err'] as { stack?: string }).stack, /went wrong/, 'an Error keeps its stack')
  t.same(untouched, { ...untouched, sub: 'alice', detail: { sid: 's' } })
  t.same(same, { sub: 'alice', detail: { sid: 's' } }, 'the logged object itself is never changed')
  t.notOk(logs.text.includes('e.y.z') || logs.text.includes('a.b.c') || logs.text.includes('"key"'))
})
