import { test } from 'tap'
import { API_KEY, build, issue, refreshWith } from '../support/app.js'
import { hashTag } from '../../plugins/store/redis.js'
import { mintPair, newSession, randomId } from '../../src/minting.js'

// Issue 12: a subject with a lone UTF-16 surrogate shared its records with its U+FFFD form
// (Redis keeps UTF-8, where both are the same bytes): revoking one logged the other out. And a `}`
// ended the hash tag early. (The Cluster side is in test/topologies/cluster.test.ts.)

test('a subject with a lone surrogate is refused at issuance', async (t) => {
  const app = await build(t)
  for (const sub of ['a\uD800', '\uDC00b', 'x\uDBFF\uDBFF']) {
    const response = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer ${API_KEY}` }, payload: { sub } })
    t.match(response.json(), { statusCode: 400, code: 'invalid_request', message: /well-formed/ }, JSON.stringify(sub))
  }
  t.equal((await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer ${API_KEY}` }, payload: { sub: 'emoji \uD83D\uDE00' } })).statusCode, 200, 'a surrogate pair is fine')
})

test('every subject has its own well-formed hash tag', async (t) => {
  const subjects = ['alice', 'a\uD800', 'a\uFFFD', '}x', '{}', '~x', hashTag('}x'), 'émile ✓', '']
  const tags = subjects.map(hashTag)
  t.equal(new Set(tags).size, subjects.length, 'no two share one')
  for (const tag of tags) t.notMatch(tag, /[{}]/, `${tag}: no brace to end it early`)
  t.equal(hashTag('alice'), 'alice', 'an ordinary subject is itself (keys written before 0.2 are found)')
  t.equal(hashTag('émile ✓'), 'émile ✓')
})

test('a token minted for a lone-surrogate subject (before the edge refused them) shares nothing with the U+FFFD subject', async (t) => {
  const app = await build(t)
  const nowSec = Math.floor(Date.now() / 1000)
  const session = newSession('a\uD800', undefined, {}, Date.now() * 1000)
  const lone = mintPair(app.keyring, app.config, session, nowSec, { access: randomId(), refresh: randomId() }, nowSec)
  const replacement = await issue(app, { sub: 'a\uFFFD' })
  const everywhere = await app.inject({ method: 'POST', url: `/v1/subjects/${encodeURIComponent('a\uFFFD')}/revoke`, headers: { authorization: `Bearer ${API_KEY}` } })
  t.equal(everywhere.statusCode, 200)
  t.equal((await refreshWith(app, replacement.refresh_token)).json().code, 'token_revoked', 'the U+FFFD subject is logged out')
  t.equal((await refreshWith(app, lone.refresh_token)).statusCode, 200, 'the other subject is not')
})

test('a lone surrogate cannot reach log-out-everywhere through the path: it is not UTF-8, so the URL is refused', async (t) => {
  const app = await build(t)
  const response = await app.inject({ method: 'POST', url: '/v1/subjects/a%ED%A0%80/revoke', headers: { authorization: `Bearer ${API_KEY}` } })
  t.match(response.json(), { statusCode: 400, code: 'invalid_request', message: /URL is not valid/ })
})
