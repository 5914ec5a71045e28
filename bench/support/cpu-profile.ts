/**
 * A V8 CPU profile of this process over a chosen window (the apply window, with the agent in-process), written as
 * a .cpuprofile file that Chrome DevTools or speedscope open.
 */
import { Session } from 'node:inspector/promises';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface CpuProfile {
  /** Stops profiling and writes `<dir>/<name>.cpuprofile`; returns the path. */
  stop(dir: string, name: string): Promise<string>;
}

export async function startCpuProfile(): Promise<CpuProfile> {
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.setSamplingInterval', { interval: 200 });
  await session.post('Profiler.start');
  return {
    stop: async (dir, name) => {
      const { profile } = await session.post('Profiler.stop');
      session.disconnect();
      mkdirSync(dir, { recursive: true });
      const path = join(dir, `${name}-${Date.now()}.cpuprofile`);
      writeFileSync(path, JSON.stringify(profile));
      return path;
    },
  };
}
