import { execFileSync } from 'node:child_process'

/** A CPU list as taskset reads it: `1`, `0-3`, `0,2`, `0-1,4`. */
export const CPU_LIST = /^\d+(-\d+)?(,\d+(-\d+)?)*$/

/**
 * Pins a process, every thread of it, to a CPU list (taskset from util-linux: Node has no call of
 * its own for it). Processes it forks afterwards inherit the list: the server child pins itself
 * before it forks its workers.
 */
export function pinToCpus (pid: number, cpus: string): void {
  try {
    execFileSync('taskset', ['-a', '-pc', cpus, String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] })
  } catch (error) {
    const stderr = (error as { stderr?: Buffer }).stderr?.toString().trim()
    throw new Error(`could not pin process ${pid} to CPUs ${cpus} with taskset: ${stderr !== undefined && stderr !== '' ? stderr : (error as Error).message}`)
  }
}
