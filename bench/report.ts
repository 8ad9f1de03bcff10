import type { LatencySummary } from './load.js'

export const MiB = 1024 * 1024

export function fmtInt (n: number): string {
  return Math.round(n).toLocaleString('en-US')
}

export function fmtMs (ms: number): string {
  return ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : ms.toFixed(0)
}

export function fmtMiB (bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`
}

/** 10000 → 10k, 1000000 → 1M: how --denylist-sizes are written. */
export function shortCount (n: number): string {
  return n >= 1e6 && n % 1e5 === 0 ? `${n / 1e6}M` : n >= 1e3 && n % 100 === 0 ? `${n / 1e3}k` : String(n)
}

/** A plain text table, numbers right-aligned. */
export function table (header: string[], rows: string[][]): string {
  const widths = header.map((title, i) => Math.max(title.length, ...rows.map((row) => (row[i] ?? '').length)))
  const line = (cells: string[]): string => cells.map((cell, i) => i === 0 ? cell.padEnd(widths[i] ?? 0) : cell.padStart(widths[i] ?? 0)).join('  ')
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n')
}

export function latencyCells (latency: LatencySummary): string[] {
  return [fmtMs(latency.p50), fmtMs(latency.p99), fmtMs(latency.p999)]
}

/** Prints the failures so that nobody can miss them. */
export function loudFailures (failures: string[]): string {
  const bar = '!'.repeat(100)
  return [
    '',
    bar,
    `!!! BENCH RUN FAILED: ${failures.length} problem${failures.length === 1 ? '' : 's'}. The numbers below the failing lines are NOT a valid measurement.`,
    ...failures.map((failure) => `!!!   - ${failure}`),
    bar,
    ''
  ].join('\n')
}

export interface MemorySample {
  /** Seconds since the soak started. */
  at: number
  rss: number
  heapUsed: number
  heapTotal: number
  external: number
}

export interface Growth {
  metric: 'heapUsed' | 'rss'
  first: number
  last: number
  growth: number
  /** Least-squares slope, bytes per minute. */
  slopePerMinute: number
  /** Standard deviation of the residuals around that line: the noise. */
  noise: number
  threshold: number
  grew: boolean
}

export interface MemoryVerdict {
  conclusive: boolean
  grew: boolean
  samplesUsed: number
  heap: Growth | null
  rss: Growth | null
  text: string
}

/**
 * Whether memory grew beyond noise. The first sample (the soak's own warm-up: JIT, pools, first
 * sockets) is left out. A metric grew when the fitted line rises over the soak by more than
 * max(3 × the residual noise, an absolute floor, a share of the first value): heap (after a full
 * GC) 2 MiB or 5 %, RSS 16 MiB or 10 % (RSS rarely shrinks, it is the coarser signal).
 */
export function memoryVerdict (samples: MemorySample[]): MemoryVerdict {
  const used = samples.slice(1)
  if (used.length < 3) {
    return { conclusive: false, grew: false, samplesUsed: used.length, heap: null, rss: null, text: `inconclusive: ${used.length} samples after the first; soak longer (at least 4 intervals)` }
  }
  const fit = (metric: 'heapUsed' | 'rss', floor: number, share: number): Growth => {
    const xs = used.map((s) => s.at)
    const ys = used.map((s) => s[metric])
    const n = xs.length
    const mx = xs.reduce((a, b) => a + b, 0) / n
    const my = ys.reduce((a, b) => a + b, 0) / n
    let sxy = 0
    let sxx = 0
    for (let i = 0; i < n; i++) {
      sxy += ((xs[i] ?? 0) - mx) * ((ys[i] ?? 0) - my)
      sxx += ((xs[i] ?? 0) - mx) ** 2
    }
    const slope = sxx === 0 ? 0 : sxy / sxx
    let squares = 0
    for (let i = 0; i < n; i++) squares += ((ys[i] ?? 0) - (my + slope * ((xs[i] ?? 0) - mx))) ** 2
    const noise = Math.sqrt(squares / Math.max(1, n - 2))
    const first = ys[0] ?? 0
    const last = ys[n - 1] ?? 0
    const growth = slope * ((xs[n - 1] ?? 0) - (xs[0] ?? 0))
    const threshold = Math.max(3 * noise, floor, share * first)
    return { metric, first, last, growth, slopePerMinute: slope * 60, noise, threshold, grew: growth > threshold }
  }
  const heap = fit('heapUsed', 2 * MiB, 0.05)
  const rss = fit('rss', 16 * MiB, 0.10)
  const describe = (g: Growth): string =>
    `${g.metric} ${fmtMiB(g.first)} → ${fmtMiB(g.last)} (fitted growth ${(g.growth / MiB).toFixed(2)} MiB, ${(g.slopePerMinute / MiB).toFixed(3)} MiB/min; noise ±${(g.noise / MiB).toFixed(2)} MiB; threshold ${(g.threshold / MiB).toFixed(2)} MiB)`
  const grew = heap.grew || rss.grew
  const text = `${grew ? 'MEMORY GREW beyond noise' : 'memory flat (no growth beyond noise)'}: ${describe(heap)}; ${describe(rss)}`
  return { conclusive: true, grew, samplesUsed: used.length, heap, rss, text }
}

/** The median (of an even count, the mean of the middle two). */
export function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}
