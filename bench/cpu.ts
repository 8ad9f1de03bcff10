import { readFileSync } from 'node:fs'
import type { Redis } from 'ioredis'
import type { ServerProcess } from './child.js'

/**
 * Who used the cores during a measurement: the server child, this process (autocannon), Redis,
 * and everything else on the machine (from /proc/stat, Linux only). In cores: 1.0 is one core
 * busy for the whole measurement. A server near 1.0 is the bottleneck; a bench near 1.0 means the
 * load generator is; "others" well above 0 means another workload disturbed the numbers.
 */
export interface CpuShare {
  seconds: number
  server: number
  bench: number
  redis: number | null
  /** Every core's busy time; null off Linux. */
  machine: number | null
  others: number | null
}

interface Snapshot {
  wall: bigint
  server: number
  bench: number
  redis: number | null
  machine: number | null
}

/** Busy seconds of all cores since boot, from /proc/stat (user nice system idle iowait irq softirq steal). */
function machineBusy (): number | null {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? ''
    const fields = line.trim().split(/\s+/).slice(1).map(Number)
    const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = fields
    return (user + nice + system + irq + softirq + steal) / 100
  } catch {
    return null
  }
}

/** used_cpu_user + used_cpu_sys of one Redis, or summed over several (a primary and its replica). */
async function redisCpu (redis: Redis | readonly Redis[] | null): Promise<number | null> {
  if (redis === null) return null
  const all: readonly Redis[] = 'info' in redis ? [redis] : redis
  try {
    let total = 0
    for (const info of await Promise.all(all.map(async (one) => one.info('cpu')))) {
      const user = /^used_cpu_user:([\d.]+)/m.exec(info)?.[1]
      const sys = /^used_cpu_sys:([\d.]+)/m.exec(info)?.[1]
      if (user === undefined || sys === undefined) return null
      total += Number(user) + Number(sys)
    }
    return total
  } catch {
    return null
  }
}

function seconds (usage: NodeJS.CpuUsage): number {
  return (usage.user + usage.system) / 1e6
}

/** `redis`: the Redis (or Redises) whose CPU is the "redis" column; every other process counts as "others". */
export async function cpuSnapshot (server: ServerProcess, redis: Redis | readonly Redis[] | null): Promise<Snapshot> {
  const [stats, redisSeconds] = await Promise.all([server.stats(false), redisCpu(redis)])
  return { wall: process.hrtime.bigint(), server: seconds(stats.cpu), bench: seconds(process.cpuUsage()), redis: redisSeconds, machine: machineBusy() }
}

export function cpuShare (before: Snapshot, after: Snapshot): CpuShare {
  const wall = Number(after.wall - before.wall) / 1e9
  const per = (a: number, b: number): number => (b - a) / wall
  const server = per(before.server, after.server)
  const bench = per(before.bench, after.bench)
  const redis = before.redis === null || after.redis === null ? null : per(before.redis, after.redis)
  const machine = before.machine === null || after.machine === null ? null : per(before.machine, after.machine)
  const others = machine === null ? null : Math.max(0, machine - server - bench - (redis ?? 0))
  return { seconds: wall, server, bench, redis, machine, others }
}
