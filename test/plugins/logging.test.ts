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
