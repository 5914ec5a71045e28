/**
 * CPU time of a PostgreSQL server (postmaster and every backend and auxiliary process), read from /proc.
 *
 * /proc/<pid>/stat fields (proc(5)): 4 ppid, 14 utime, 15 stime, 16 cutime, 17 cstime, in clock ticks.
 * A backend that exits during the window is reaped by the postmaster, and its time moves into the postmaster's
 * cutime/cstime; so "utime+stime of every live process + cutime+cstime of the postmaster" never loses a process
 * that ended between two samples (before: in its own utime; after: in the postmaster's cutime).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const TICKS_PER_SECOND = clockTicks();

function clockTicks(): number {
  try {
    const ticks = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());
    return Number.isFinite(ticks) && ticks > 0 ? ticks : 100;
  } catch {
    return 100;
  }
}

interface ProcStat {
  readonly pid: number;
  readonly ppid: number;
  /** utime + stime, ms */
  readonly ownMs: number;
  /** cutime + cstime (reaped children), ms */
  readonly childrenMs: number;
}

function readStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined; // exited between readdir and read
  }
  // The command name (field 2) is in parentheses and may hold spaces and ')': split after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state), so field n is fields[n - 3].
  const num = (n: number): number => Number(fields[n - 3]);
  const toMs = (ticks: number): number => (ticks * 1000) / TICKS_PER_SECOND;
  return { pid, ppid: num(4), ownMs: toMs(num(14) + num(15)), childrenMs: toMs(num(16) + num(17)) };
}

export function postmasterPid(dataDir: string): number {
  const first = readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0] ?? '';
  const pid = Number(first.trim());
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`no postmaster pid in ${dataDir}/postmaster.pid`);
  return pid;
}

/**
 * Read and write system calls of a process so far (/proc/<pid>/io: syscr, syscw). They count read(2)/write(2) and
 * friends, which is how Node does socket I/O, but not recv/send, which is how PostgreSQL backends do it.
 */
export interface SyscallCount {
  readonly reads: number;
  readonly writes: number;
}

export function syscalls(pid: number | 'self'): SyscallCount | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/io`, 'utf8');
    const field = (name: string): number => Number(new RegExp(`^${name}: (\\d+)$`, 'm').exec(text)?.[1] ?? NaN);
    return { reads: field('syscr'), writes: field('syscw') };
  } catch {
    return undefined;
  }
}

export interface ServerCpuSample {
  readonly totalMs: number;
  /** CPU ms of each live process of the server, by pid. */
  readonly byPid: ReadonlyMap<number, number>;
}

/** Total CPU of the postmaster and its (direct) children; PostgreSQL forks every process from the postmaster. */
export function sampleServerCpu(postmaster: number): ServerCpuSample {
  const byPid = new Map<number, number>();
  const root = readStat(postmaster);
  if (!root) throw new Error(`postmaster ${postmaster} is not running`);
  let totalMs = root.ownMs + root.childrenMs;
  byPid.set(postmaster, root.ownMs);
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = readStat(Number(entry));
    if (!stat || stat.ppid !== postmaster) continue;
    totalMs += stat.ownMs;
    byPid.set(stat.pid, stat.ownMs);
  }
  return { totalMs, byPid };
}

export interface ServerCpuUsage {
  readonly totalMs: number;
  /** The process that used the most CPU in the window (for a subscriber: the apply backend or worker). */
  readonly busiest: { readonly pid: number; readonly ms: number; readonly title: string } | undefined;
}

export function serverCpuBetween(before: ServerCpuSample, after: ServerCpuSample): ServerCpuUsage {
  let busiest: { pid: number; ms: number } | undefined;
  for (const [pid, ms] of after.byPid) {
    const used = ms - (before.byPid.get(pid) ?? 0);
    if (!busiest || used > busiest.ms) busiest = { pid, ms: used };
  }
  return {
    totalMs: after.totalMs - before.totalMs,
    busiest: busiest ? { ...busiest, title: processTitle(busiest.pid) } : undefined,
  };
}

/** PostgreSQL sets its process titles ("postgres: logical replication apply worker ..."). */
function processTitle(pid: number): string {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((a) => a !== '');
    // The postmaster keeps its real argv (".../bin/postgres -D <dir>"); every other process has a title.
    return argv.length > 1 && argv[1] === '-D' ? 'postmaster' : argv.join(' ');
  } catch {
    return '(exited)';
  }
}

/** CPU ms the whole machine spent busy so far (every core; /proc/stat "cpu" line: all but idle and iowait). */
export function machineBusyMs(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const ticks = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already inside user)
  const busy = (ticks[0] ?? 0) + (ticks[1] ?? 0) + (ticks[2] ?? 0) + (ticks[5] ?? 0) + (ticks[6] ?? 0) + (ticks[7] ?? 0);
  return (busy * 1000) / TICKS_PER_SECOND;
}
