/**
 * The floor of a refresh (issue #18): what no refresh service can skip, each measured in this
 * process on this machine (CPU time per operation, after a warm-up): one access-token signature
 * of the configured algorithm, the two HMACs of the refresh tokens (the one presented, verified;
 * the one answered, signed), one hello-world request's server CPU (from the run's ceiling), and
 * one Redis script round trip's client-side CPU. Rotor's server CPU per refresh is printed as a
 * multiple of their sum.
 */
import { createHmac } from 'node:crypto'
import { Redis } from 'ioredis'
import type { Minter } from './tokens.js'
import { median, table } from './report.js'
import type { ScenarioResult } from './scenarios.js'

export interface Floor {
  algorithm: string
  signUs: number
  hmacsUs: number
  redisRoundTripUs: number
  helloUs: number
  sumUs: number
  /** Rotor's server CPU per refresh of this algorithm in the same run, and its multiple of the sum. */
  refreshUs: number
  multiple: number
}

const OPERATIONS = 4000

function cpuUs (): number {
  const { user, system } = process.cpuUsage()
  return user + system
}

function perOperation (run: () => void): number {
  for (let i = 0; i < OPERATIONS / 10; i++) run()
  const started = cpuUs()
  for (let i = 0; i < OPERATIONS; i++) run()
  return (cpuUs() - started) / OPERATIONS
}

async function perAsyncOperation (run: () => Promise<unknown>): Promise<number> {
  for (let i = 0; i < OPERATIONS / 10; i++) await run()
  const started = cpuUs()
  for (let i = 0; i < OPERATIONS; i++) await run()
  return (cpuUs() - started) / OPERATIONS
}

/** `helloUs` and `refreshUs`: server CPU per request of the run's ceiling and of Rotor's refresh (this algorithm). */
export async function measureFloor (minter: Minter, redisUrl: string, helloUs: number, refreshUs: number): Promise<Floor> {
  const { keyring } = minter
  const nowSec = Math.floor(Date.now() / 1000)
  const payload = { role: 'editor', iss: 'rotor', sub: 'user-1', iat: nowSec, exp: nowSec + 3600, jti: 'AAAAAAAAAAAAAAAAAAAAAA', sid: 'AQZhwIdPT-hUrBmicCATFBQ', auth_time: nowSec, token_type: 'access' }
  const signUs = perOperation(() => keyring.signAccess(payload))
  const refreshToken = minter.refreshToken()
  const signed = refreshToken.slice(0, refreshToken.lastIndexOf('.'))
  const hmacsUs = 2 * perOperation(() => createHmac('sha256', keyring.active.refreshKey).update(signed).digest())
  const redis = new Redis(redisUrl, { lazyConnect: true })
  let redisRoundTripUs: number
  try {
    await redis.connect()
    redis.defineCommand('floorScript', { numberOfKeys: 1, lua: "return redis.call('EXISTS', KEYS[1])" })
    const script = (redis as unknown as { floorScript: (key: string) => Promise<number> }).floorScript
    redisRoundTripUs = await perAsyncOperation(async () => await script.call(redis, 'rotor-bench-floor:none'))
  } finally {
    redis.disconnect()
  }
  const sumUs = signUs + hmacsUs + redisRoundTripUs + helloUs
  return { algorithm: minter.config.jwtAlgorithm, signUs, hmacsUs, redisRoundTripUs, helloUs, sumUs, refreshUs, multiple: refreshUs / sumUs }
}

/** Server CPU per request (µs) of a measured scenario. */
export function serverCpuUs (result: ScenarioResult | undefined): number | null {
  return cpuUsPerRequest(result, 'server')
}

/** Cores one party used during the measured run, as CPU µs per request answered (null when not measured). */
export function cpuUsPerRequest (result: ScenarioResult | undefined, party: 'server' | 'redis'): number | null {
  const cores = result?.cpu?.[party]
  const rps = result?.measured?.rps
  return cores === null || cores === undefined || rps === undefined || rps === 0 ? null : cores / rps * 1e6
}

/** The floor of each refresh algorithm the run measured (with the ceiling): none when it measured neither. */
export async function measureFloors (results: ScenarioResult[], minterFor: (algorithm: 'EdDSA' | 'HS256') => Minter, redisUrl: string): Promise<Floor[]> {
  const helloUs = serverCpuUs(results.find((r) => r.name === 'hello'))
  const floors: Floor[] = []
  for (const [name, algorithm] of [['refresh', 'EdDSA'], ['refresh-hs256', 'HS256']] as const) {
    // With --reps, the median of the reps.
    const reps = results.filter((r) => r.name === name && r.fill === null).map(serverCpuUs).filter((us): us is number => us !== null)
    const refreshUs = reps.length === 0 ? null : median(reps)
    if (helloUs !== null && refreshUs !== null) floors.push(await measureFloor(minterFor(algorithm), redisUrl, helloUs, refreshUs))
  }
  return floors
}

export function floorTable (floors: Floor[]): string {
  const us = (n: number): string => n.toFixed(1)
  return table(['floor of a refresh (CPU µs)', 'signature', '2 HMACs', 'Redis round trip', 'hello request', 'sum', 'Rotor refresh', '× floor'],
    floors.map((f) => [f.algorithm, us(f.signUs), us(f.hmacsUs), us(f.redisRoundTripUs), us(f.helloUs), us(f.sumUs), us(f.refreshUs), f.multiple.toFixed(2)]))
}
