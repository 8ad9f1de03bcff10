// Reading Rotor's counters from its Prometheus exposition (/metrics), the one way every test does.

/** The value of one sample line of the exposition, or 0 when absent. */
export function sample (text: string, line: string): number {
  const found = text.split('\n').find((candidate) => candidate.startsWith(`${line} `))
  return found === undefined ? 0 : Number(found.slice(line.length + 1))
}

/** The sum of a labelled metric's samples, whatever their labels. */
export function sum (text: string, name: string): number {
  return text.split('\n').filter((line) => line.startsWith(`${name}{`)).reduce((total, line) => total + Number(line.split(' ')[1]), 0)
}

/** One sample of the exposition a Rotor listening at `base` serves, or 0 when absent. */
export async function metric (base: string, line: string): Promise<number> {
  return sample(await scrape(base), line)
}

/** The exposition a Rotor listening at `base` serves at /metrics. */
export async function scrape (base: string): Promise<string> {
  return await (await fetch(`${base}/metrics`)).text()
}
