// Rotor for a test: its settings, the app built and listening, its logs, and the token routes
// called as a backend and a front end call them.
import { randomBytes } from 'node:crypto'
import { Writable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../../src/app.js'
import { loadConfig, type Config } from '../../src/config.js'
import { deletePrefix } from './redis.js'
import type { Test } from './tap.js'

export const API_KEY = 'test-api-key-0123456789abcdef'
export const OTHER_API_KEY = 'other-api-key-0123456789abcdef'

/** The machine's Redis (CI may point elsewhere); tests never flush it, they use their own prefix. */
export const REDIS_URL = process.env['TEST_REDIS_URL'] ?? 'redis://127.0.0.1:6379'

/** Settings for a test: a real Redis under a prefix no other test shares, quiet logs. */
export function testConfig (env: Record<string, string> = {}): Config {
  return loadConfig({
    API_KEYS: `${API_KEY},${OTHER_API_KEY}`,
    LOG_LEVEL: 'silent',
    REDIS_URL,
    REDIS_KEY_PREFIX: `rotor-test:${randomBytes(6).toString('hex')}:`,
    RATE_LIMIT_MAX: '100000',
    ...env
  })
}

/** Every line the app logged, parsed; and the raw text, to prove what never appears in it. */
export class LogCapture extends Writable {
  readonly lines: Array<Record<string, unknown>> = []
  text = ''
  override _write (chunk: Buffer, _encoding: string, callback: () => void): void {
    const text = chunk.toString()
    this.text += text
    for (const line of text.split('\n')) if (line !== '') this.lines.push(JSON.parse(line) as Record<string, unknown>)
    callback()
  }
}

/** Builds the app for a test, with teardown that closes it and removes its Redis keys. */
export async function build (t: Test, env: Record<string, string> = {}, logs?: LogCapture): Promise<FastifyInstance> {
  const config = testConfig(logs === undefined ? env : { LOG_LEVEL: 'info', ...env })
  const app = await buildApp(config, logs === undefined ? {} : { logStream: logs })
  t.teardown(async () => {
    await app.close()
    if (config.redis.kind === 'single') await deletePrefix(config.redis.url, config.redisKeyPrefix)
  })
  return app
}

/** Listens on a free port of the loopback; returns the base URL. */
export async function listen (app: FastifyInstance): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  return `http://127.0.0.1:${address.port}`
}

export function decodeJwt (token: string): { header: Record<string, unknown>, payload: Record<string, unknown> } {
  const [header = '', payload = ''] = token.split('.')
  return {
    header: JSON.parse(Buffer.from(header, 'base64url').toString()) as Record<string, unknown>,
    payload: JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<string, unknown>
  }
}

export interface Pair {
  access_token: string
  refresh_token: string
  token_type: string
  expires_in: number
  refresh_expires_in: number
}

/** Issues a pair through the route, as a backend would. */
export async function issue (app: FastifyInstance, body: Record<string, unknown> = { sub: 'alice' }): Promise<Pair> {
  const response = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer ${API_KEY}` }, payload: body })
  if (response.statusCode !== 200) throw new Error(`issue failed: ${response.statusCode} ${response.body}`)
  return response.json<Pair>()
}

export async function refreshWith (app: FastifyInstance, refreshToken: string): Promise<import('light-my-request').Response> {
  return app.inject({ method: 'POST', url: '/v1/tokens/refresh', payload: { refresh_token: refreshToken } })
}

export async function introspectToken (app: FastifyInstance, token: string): Promise<Record<string, unknown>> {
  const response = await app.inject({ method: 'POST', url: '/v1/tokens/introspect', headers: { authorization: `Bearer ${API_KEY}` }, payload: { token } })
  return response.json<Record<string, unknown>>()
}
