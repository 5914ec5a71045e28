/**
 * A V8 CPU profile of this process over a chosen window (the apply window, with the agent in-process), written as
 * a .cpuprofile file that Chrome DevTools or speedscope open; beside it a sampling heap profile (.heapprofile) of
 * everything allocated in the window, collected or not: where the garbage the collector spends its time on comes
 * from.
 */
import { Session } from 'node:inspector/promises';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface CpuProfile {
  /**
   * Stops profiling and writes `<dir>/<name>-<time>.cpuprofile` and `.heapprofile`; returns the first one's path and
   * the bytes allocated in the window (the heap profile's estimate).
   */
  stop(dir: string, name: string): Promise<{ path: string; allocatedBytes: number }>;
}

export async function startCpuProfile(): Promise<CpuProfile> {
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.setSamplingInterval', { interval: 200 });
  await session.post('Profiler.start');
  await session.post('HeapProfiler.startSampling', { samplingInterval: 16_384, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true });
  return {
    stop: async (dir, name) => {
      const { profile } = await session.post('Profiler.stop');
      const { profile: heap } = await session.post('HeapProfiler.stopSampling');
      session.disconnect();
      mkdirSync(dir, { recursive: true });
      const path = join(dir, `${name}-${Date.now()}`);
      writeFileSync(`${path}.cpuprofile`, JSON.stringify(profile));
      writeFileSync(`${path}.heapprofile`, JSON.stringify(heap));
      return { path: `${path}.cpuprofile`, allocatedBytes: totalSize(heap.head) };
    },
  };
}

function totalSize(node: { selfSize: number; children: { selfSize: number; children: unknown[] }[] }): number {
  let total = node.selfSize;
  for (const child of node.children) total += totalSize(child as typeof node);
  return total;
}
