import autocannon from 'autocannon'

/** Every response time of a run (ms, from autocannon's hrtime), kept whole: exact percentiles. */
export class Latencies {
  private data = new Float64Array(1 << 16)
  private size = 0

  push (ms: number): void {
    if (this.size === this.data.length) {
      const bigger = new Float64Array(this.data.length * 2)
      bigger.set(this.data)
      this.data = bigger
    }
    this.data[this.size++] = ms
  }

  get count (): number {
    return this.size
  }

  reset (): void {
    this.size = 0
  }

  summary (): LatencySummary {
    const sorted = this.data.slice(0, this.size).sort()
    const at = (q: number): number => this.size === 0 ? 0 : sorted[Math.min(this.size - 1, Math.max(0, Math.ceil(q * this.size) - 1))] ?? 0
    let sum = 0
    for (const value of sorted) sum += value
    return {
      p50: at(0.5),
      p90: at(0.9),
      p99: at(0.99),
      p999: at(0.999),
      max: this.size === 0 ? 0 : sorted[this.size - 1] ?? 0,
      mean: this.size === 0 ? 0 : sum / this.size
    }
  }
}

/** A pooled request that needs headers of its own besides its body. */
export interface PooledRequest { body: string, headers: Record<string, string> }

export interface LatencySummary { p50: number, p90: number, p99: number, p999: number, max: number, mean: number }

export interface IntervalStats {
  /** Seconds since the run started, at the end of this interval. */
  at: number
  seconds: number
  responses: number
  rps: number
  non2xx: number
  latency: LatencySummary
}

export interface LoadSpec {
  url: string
  method: 'GET' | 'POST'
  path: string
  headers?: Record<string, string>
  /** The body of each request (with headers of its own, e.g. a DPoP proof), or undefined once the pool is spent (the run then stops short). */
  body?: () => string | PooledRequest | undefined
  /** At most this many requests (the size of the body pool): no body is ever sent twice. */
  limit?: number
  duration: number
  connections: number
  /** Requests per second over all connections (autocannon overallRate); unset: as fast as it goes. */
  overallRate?: number
  /** A 2xx whose body fails this check counts as a mismatch (e.g. an introspection saying inactive). */
  verify?: (body: string) => boolean
  /** Called every `seconds` with the stats of that interval (the soak's report). */
  interval?: { seconds: number, report: (stats: IntervalStats) => Promise<void> }
}

export interface LoadResult {
  /** Completed responses. */
  responses: number
  seconds: number
  rps: number
  latency: LatencySummary
  /** autocannon's own percentiles (whole milliseconds), for comparison. */
  autocannonLatency: { p50: number, p99: number, p99_9: number }
  non2xx: number
  errors: number
  timeouts: number
  mismatches: number
  statusCodes: Record<string, number>
  /** The first few non-2xx or mismatching bodies, to say why. */
  sampleFailures: string[]
  bodiesUsed: number
  /** The body pool ran out (or nearly: connections had stopped) before the duration was over. */
  exhausted: boolean
  intervals: IntervalStats[]
}

/** Any non-2xx, connection error, timeout or 2xx with an unexpected body: a run that fails the bench. */
export function unhealthy (result: LoadResult): boolean {
  return result.non2xx > 0 || result.errors > 0 || result.timeouts > 0 || result.mismatches > 0
}

/** The run in progress (one at a time), for a signal handler to stop: process-wide, like the sets of live children. */
let current: autocannon.Instance | null = null

/** Stops the run in progress (on SIGINT). */
export function stopCurrentLoad (): void {
  current?.stop()
}

/** A placeholder that Rotor refuses with 401: were the pool ever short, it shows as non-2xx, never as a reuse. */
const SPENT = '{"refresh_token":"pool.spent.x","token":"pool.spent.x"}'

export async function runLoad (spec: LoadSpec): Promise<LoadResult> {
  const all = new Latencies()
  const slice = new Latencies()
  const statusCodes: Record<string, number> = {}
  const sampleFailures: string[] = []
  const intervals: IntervalStats[] = []
  let mismatches = 0
  let bodiesUsed = 0
  let sliceResponses = 0
  let sliceNon2xx = 0
  const next = spec.body

  const request: autocannon.Request = {
    method: spec.method,
    path: spec.path,
    headers: { ...(spec.method === 'POST' ? { 'content-type': 'application/json' } : {}), ...spec.headers },
    onResponse: (status: number, body: string) => {
      const ok = status >= 200 && status < 300
      if (ok && spec.verify !== undefined && !spec.verify(body)) {
        mismatches++
        if (sampleFailures.length < 5) sampleFailures.push(`${status} (unexpected body) ${body.slice(0, 300)}`)
      } else if (!ok && sampleFailures.length < 5) {
        sampleFailures.push(`${status} ${body.slice(0, 300)}`)
      }
    }
  }
  if (next !== undefined) {
    request.setupRequest = (req: autocannon.Request) => {
      const item = next()
      if (item !== undefined) bodiesUsed++
      if (typeof item === 'object') {
        req.body = item.body
        req.headers = { ...request.headers, ...item.headers }
      } else {
        req.body = item ?? SPENT
      }
      return req
    }
  }

  const options: autocannon.Options = {
    url: spec.url,
    connections: spec.connections,
    duration: spec.duration,
    requests: [request],
    ...(spec.limit === undefined ? {} : { maxOverallRequests: spec.limit }),
    ...(spec.overallRate === undefined ? {} : { overallRate: spec.overallRate })
  }

  const started = process.hrtime.bigint()
  let sliceStarted = started
  let timer: NodeJS.Timeout | null = null
  let reporting: Promise<void> = Promise.resolve()

  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    const instance = autocannon(options, (error: unknown, done: autocannon.Result) => {
      if (error !== null && error !== undefined) reject(error instanceof Error ? error : new Error(String(error)))
      else resolve(done)
    })
    current = instance
    instance.on('response', (_client, statusCode, _bytes, responseTime) => {
      all.push(responseTime)
      slice.push(responseTime)
      sliceResponses++
      const code = String(statusCode)
      statusCodes[code] = (statusCodes[code] ?? 0) + 1
      if (statusCode < 200 || statusCode >= 300) sliceNon2xx++
    })
    if (spec.interval !== undefined) {
      const { seconds, report } = spec.interval
      timer = setInterval(() => {
        const now = process.hrtime.bigint()
        const stats: IntervalStats = {
          at: Number(now - started) / 1e9,
          seconds: Number(now - sliceStarted) / 1e9,
          responses: sliceResponses,
          rps: sliceResponses / (Number(now - sliceStarted) / 1e9),
          non2xx: sliceNon2xx,
          latency: slice.summary()
        }
        intervals.push(stats)
        slice.reset()
        sliceResponses = 0
        sliceNon2xx = 0
        sliceStarted = now
        reporting = reporting.then(async () => report(stats)).catch((error: unknown) => {
          process.stderr.write(`bench: interval report failed: ${error instanceof Error ? error.message : String(error)}\n`)
        })
      }, seconds * 1000)
    }
  }).finally(() => {
    current = null
    if (timer !== null) clearInterval(timer)
  })
  await reporting

  const seconds = result.duration > 0 ? result.duration : Number(process.hrtime.bigint() - started) / 1e9
  const non2xx = Object.entries(statusCodes).reduce((sum, [code, count]) => sum + (code.startsWith('2') ? 0 : count), 0)
  return {
    responses: all.count,
    seconds,
    rps: all.count / seconds,
    latency: all.summary(),
    autocannonLatency: { p50: result.latency.p50, p99: result.latency.p99, p99_9: result.latency.p99_9 },
    non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    mismatches,
    statusCodes,
    sampleFailures,
    bodiesUsed,
    // autocannon splits the cap evenly over the connections: once some of them reach their share,
    // fewer connections are left, so a pool nearly spent already distorts the run.
    exhausted: spec.limit !== undefined && (bodiesUsed >= spec.limit * 0.95 || seconds < spec.duration * 0.95),
    intervals
  }
}
