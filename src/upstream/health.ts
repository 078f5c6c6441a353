// Periodic health of each configured upstream: a probe (log in, ask pg_is_in_recovery())
// every interval, backing off while an endpoint stays down. New server connections skip
// endpoints known to be down or, with require_primary, in recovery.

import type { Endpoint } from '../config/types.js';
import { endpointKey } from './dial.js';

/** What the last probe (or connection attempt) found. `unknown`: not probed yet. */
export type Health = 'unknown' | 'primary' | 'standby' | 'down';

/** Logs in and reports the server's role; rejects when the endpoint cannot be used at all. */
export type Probe = (endpoint: Endpoint, timeoutMs: number) => Promise<'primary' | 'standby'>;

export interface HealthOptions {
  readonly intervalMs: number;
  readonly timeoutMs: number;
  readonly requirePrimary: boolean;
}

/** Longest wait between probes of an endpoint that stays down. */
export const MAX_BACKOFF_MS = 30_000;

/**
 * Delay before the next probe after `failures` consecutive failures: the interval while
 * healthy, then doubling, capped at MAX_BACKOFF_MS (or the interval, if that is longer).
 */
export function nextProbeDelay(intervalMs: number, failures: number): number {
  if (failures <= 0) return intervalMs;
  return Math.min(intervalMs * 2 ** Math.min(failures, 20), Math.max(intervalMs, MAX_BACKOFF_MS));
}

/** May new server connections go to an endpoint in this state? */
export function usable(health: Health, requirePrimary: boolean): boolean {
  return health === 'unknown' || health === 'primary' || (health === 'standby' && !requirePrimary);
}

interface EndpointState {
  readonly endpoint: Endpoint;
  health: Health;
  failures: number;
  timer: NodeJS.Timeout | null;
  probing: boolean;
  /** Bumped when the endpoint is dropped or re-armed: a probe of an older round is ignored. */
  round: number;
}

export class HealthChecker {
  private readonly states = new Map<string, EndpointState>();
  private stopped = false;

  constructor(
    private readonly probe: Probe,
    private opts: HealthOptions,
    /** Called when an endpoint's health changes, with the error that made it down. */
    private readonly onChange: (endpoint: Endpoint, health: Health, previous: Health, error?: string) => void,
  ) {}

  /** (Re)configures the endpoints to watch; those kept keep their health and schedule. */
  configure(endpoints: readonly Endpoint[], opts: HealthOptions): void {
    const intervalChanged = opts.intervalMs !== this.opts.intervalMs;
    this.opts = opts;
    const wanted = new Set(endpoints.map(endpointKey));
    for (const [key, st] of this.states) {
      if (wanted.has(key)) continue;
      if (st.timer) clearTimeout(st.timer);
      st.round++;
      this.states.delete(key);
    }
    for (const endpoint of endpoints) {
      const key = endpointKey(endpoint);
      const st = this.states.get(key);
      if (!st) {
        const fresh: EndpointState = { endpoint, health: 'unknown', failures: 0, timer: null, probing: false, round: 0 };
        this.states.set(key, fresh);
        if (!this.stopped) this.schedule(fresh, 0);
      } else if (intervalChanged && !this.stopped && !st.probing) {
        this.schedule(st, nextProbeDelay(opts.intervalMs, st.failures));
      }
    }
  }

  health(endpoint: Endpoint): Health {
    return this.states.get(endpointKey(endpoint))?.health ?? 'unknown';
  }

  isUsable(endpoint: Endpoint): boolean {
    return usable(this.health(endpoint), this.opts.requirePrimary);
  }

  /** Has any endpoint been found usable? null: none probed yet. */
  anyUsable(): boolean | null {
    let probed = false;
    for (const st of this.states.values()) {
      if (st.health === 'unknown') continue;
      probed = true;
      if (usable(st.health, this.opts.requirePrimary)) return true;
    }
    return probed ? false : null;
  }

  /** What a real connection attempt found, between probes. */
  report(endpoint: Endpoint, health: Exclude<Health, 'unknown'>, error?: string): void {
    const st = this.states.get(endpointKey(endpoint));
    if (st) this.record(st, health, error);
  }

  stop(): void {
    this.stopped = true;
    for (const st of this.states.values()) {
      if (st.timer) clearTimeout(st.timer);
      st.timer = null;
      st.round++;
    }
  }

  private schedule(st: EndpointState, delayMs: number): void {
    if (st.timer) clearTimeout(st.timer);
    st.timer = setTimeout(() => void this.run(st), delayMs);
    st.timer.unref();
  }

  private async run(st: EndpointState): Promise<void> {
    st.timer = null;
    const round = st.round;
    st.probing = true;
    let health: Exclude<Health, 'unknown'>;
    let error: string | undefined;
    try {
      health = await this.probe(st.endpoint, this.opts.timeoutMs);
    } catch (err) {
      health = 'down';
      error = (err as Error).message;
    }
    st.probing = false;
    if (this.stopped || round !== st.round) return;
    this.record(st, health, error);
    this.schedule(st, nextProbeDelay(this.opts.intervalMs, st.failures));
  }

  private record(st: EndpointState, health: Exclude<Health, 'unknown'>, error?: string): void {
    st.failures = health === 'down' ? st.failures + 1 : 0;
    const previous = st.health;
    st.health = health;
    if (previous !== health) this.onChange(st.endpoint, health, previous, error);
  }
}
