import { unwatchFile, watchFile } from 'node:fs'

/** How often a watched file is polled, and how long it must stay still before it is read. */
const WATCH_INTERVAL_MS = 1000
const WATCH_SETTLE_MS = 250

/**
 * Calls `onChange` once a file has changed and stayed still for a moment (a write in several
 * steps is read once, whole). Polls the path (stat) rather than using fs.watch: it sees an atomic
 * rename, a symlink swapped by a Kubernetes secret update, and a bind mount where inotify events
 * do not cross. A change is seen within about 1.3 s. Returns the function that stops watching.
 */
export function watchSettled (path: string, onChange: () => void): () => void {
  let settling: NodeJS.Timeout | undefined
  const changed = (): void => {
    clearTimeout(settling)
    settling = setTimeout(onChange, WATCH_SETTLE_MS)
  }
  watchFile(path, { interval: WATCH_INTERVAL_MS, persistent: false }, changed)
  return () => {
    unwatchFile(path, changed)
    clearTimeout(settling)
  }
}
