// A Rotor for the OAuth clients' tests: listening on a real socket, its issuer its own URL, a
// gateway's API key to authenticate with, and sessions issued over the socket as a backend does.
import type { FastifyInstance } from 'fastify'
import { API_KEY, build, type Pair } from './app.js'
import { freePort } from './net.js'
import type { Test } from './tap.js'

export const GATEWAY = 'gateway'
export const GATEWAY_SECRET = 'gateway-secret-0123456789'
/** Seconds: long enough that no test sees a token expire, distinct enough to recognise in `expires_in`. */
export const ACCESS_TOKEN_TTL = 600

export interface Rotor { app: FastifyInstance, issuer: string }

/**
 * Rotor with JWT_ISSUER set to its own base URL: the port is picked first, as the metadata is
 * built from the issuer. Another process may take the port in between; then a new app tries another.
 */
export async function startRotor (t: Test, env: Record<string, string> = {}): Promise<Rotor> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort()
    const issuer = `http://127.0.0.1:${port}`
    const app = await build(t, {
      JWT_ISSUER: issuer, API_KEYS: `${API_KEY},${GATEWAY}:${GATEWAY_SECRET}`, ACCESS_TOKEN_TTL: `${ACCESS_TOKEN_TTL}s`, ...env
    })
    try {
      await app.listen({ port, host: '127.0.0.1' })
      return { app, issuer }
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt === 3) throw error
    }
  }
}

/** A session, issued as a backend does: `POST /v1/tokens` over the socket, the gateway's key as HTTP Basic. */
export async function issueOverSocket (rotor: Rotor, sub = 'alice', dpopJkt?: string): Promise<Pair> {
  const response = await fetch(`${rotor.issuer}/v1/tokens`, {
    method: 'POST',
    headers: { authorization: `Basic ${Buffer.from(`${GATEWAY}:${GATEWAY_SECRET}`).toString('base64')}`, 'content-type': 'application/json' },
    body: JSON.stringify(dpopJkt === undefined ? { sub } : { sub, dpop_jkt: dpopJkt })
  })
  if (response.status !== 200) throw new Error(`issue failed: ${response.status} ${await response.text()}`)
  return await response.json() as Pair
}
